#!/bin/bash
# The light variant on 2, 4 and 8 cores of the 16-core machine; set-up as in serve_cores_device.sh.
cd "$(dirname "$0")/.." || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 SHOAL_REPO=$PWD/.device/repo
log=$OUT/log.txt
for cores in 0-1 2-5 2-9; do
  start=$(date +%s)
  taskset -c $cores timeout 150 python3 -m shoal bench serve --model demo.tiny-16 --quick --json --systems shoal,lean_http --out /tmp/light-$cores > $OUT/light-cores-$cores.json 2>> $log
  echo "light bench on cores $cores: rc $? in $(( $(date +%s) - start )) s" >> $log
done
tail -c 2000 $log
