#!/bin/bash
# Old (a copy of the session-start tree in .device/old-src) against new (src) on the light variant,
# 4 cores of the 16-core machine, two rounds in ABBA order; see serve_cores_device.sh for the set-up.
cd "$(dirname "$0")/.." || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 SHOAL_REPO=$PWD/.device/repo
log=$OUT/log.txt
for round in 1 2; do
  if [ $round = 1 ]; then order="old new"; else order="new old"; fi
  for tree in $order; do
    if [ $tree = old ]; then src=$PWD/.device/old-src; else src=$PWD/src; fi
    start=$(date +%s)
    PYTHONPATH=$src:/tmp/site taskset -c 2-5 timeout 120 python3 -m shoal bench serve --model demo.tiny-16 --quick --json --systems shoal,lean_http --out /tmp/ab-$tree-$round > $OUT/light-$tree-$round.json 2>> $log
    echo "$tree round $round: rc $? in $(( $(date +%s) - start )) s" >> $log
  done
done
tail -c 1500 $log
