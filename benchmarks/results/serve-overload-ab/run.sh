#!/bin/bash
cd /work/main
for rep in 1 2 3; do
 for cfg in base tail full; do
  case $cfg in
   base) cp /tmp/s4/ab/scheduler.old src/shoal/runtime/scheduler.py; cp /tmp/s4/ab/service.old src/shoal/runtime/service.py;;
   tail) cp /tmp/s4/ab/scheduler.new src/shoal/runtime/scheduler.py; cp /tmp/s4/ab/service.old src/shoal/runtime/service.py;;
   full) cp /tmp/s4/ab/scheduler.new src/shoal/runtime/scheduler.py; cp /tmp/s4/ab/service.new src/shoal/runtime/service.py;;
  esac
  .venv/bin/shoal bench serve --quick --json --systems shoal --out /tmp/s4/ab/$cfg$rep > /tmp/s4/ab/$cfg$rep.json 2>/dev/null
  echo "$cfg $rep $(python3 /tmp/s4/rows.py /tmp/s4/ab/$cfg$rep/serve.csv | tail -1)"
 done
done
cp /tmp/s4/ab/scheduler.new src/shoal/runtime/scheduler.py; cp /tmp/s4/ab/service.new src/shoal/runtime/service.py
