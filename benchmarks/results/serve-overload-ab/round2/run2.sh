#!/bin/bash
cd /work/main
for rep in 1 2 3; do
 for cfg in base final; do
  cp /tmp/s4/ab/scheduler.$cfg src/shoal/runtime/scheduler.py; cp /tmp/s4/ab/service.$cfg src/shoal/runtime/service.py
  if [ $cfg = base ]; then cp /tmp/s4/ab/batching.old src/shoal/planner/batching.py; else cp /tmp/s4/ab/batching.final src/shoal/planner/batching.py; fi
  .venv/bin/shoal bench serve --quick --json --systems shoal --out /tmp/s4/ab/r2-$cfg$rep > /tmp/s4/ab/r2-$cfg$rep.json 2>/tmp/s4/ab/r2-$cfg$rep.err
  echo "$cfg $rep $(python3 /tmp/s4/rows.py /tmp/s4/ab/r2-$cfg$rep/serve.csv | tail -1)"
 done
done
cp /tmp/s4/ab/scheduler.final src/shoal/runtime/scheduler.py; cp /tmp/s4/ab/service.final src/shoal/runtime/service.py; cp /tmp/s4/ab/batching.final src/shoal/planner/batching.py
