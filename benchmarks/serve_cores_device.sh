#!/bin/bash
# shoal's serving bench (quick, shoal and the lean server) on 2 cores and on 4 cores of the same
# machine, and whether ONNX Runtime there has the CUDA execution provider (then a CUDA profile).
# Written for the 16-core GPU machine lent to some sessions (no registry there): the repository
# root must hold .device/whl (wheels of the packages that machine lacks) and .device/repo (the
# demo family); results go to $OUT. Results of 2026-11-29: benchmarks/results/serve-cores/.
cd "$(dirname "$0")/.." || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 SHOAL_REPO=$PWD/.device/repo
log=$OUT/log.txt
{ nproc; lscpu | grep -E "Model name|^CPU\(s\)|Thread|MHz"; nvidia-smi -L; python3 --version;
  python3 -c "import onnxruntime as o, numpy; print('ort', o.__version__, o.get_available_providers(), 'numpy', numpy.__version__)";
  python3 -m shoal zoo list; } >> $log 2>&1
for cores in 0-1 2-5; do
  name=cores-$cores
  start=$(date +%s)
  taskset -c $cores timeout 200 python3 -m shoal bench serve --quick --json --systems shoal,lean_http --out /tmp/$name > $OUT/serve-$name.json 2>> $log
  echo "bench on cores $cores: rc $? in $(( $(date +%s) - start )) s" >> $log
done
if python3 -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
  timeout 120 python3 -m shoal profile --family demo --device cuda:0 --batch-sizes 1,8,32 --repeats 10 --json > $OUT/cuda-profile.json 2>> $log
  echo "cuda profile rc $?" >> $log
else
  timeout 60 python3 -m shoal profile --family demo --device cuda:0 --batch-sizes 1 --repeats 2 >> $log 2>&1
  echo "cuda profile without the CUDA provider: rc $? (1 expected: device not present)" >> $log
fi
tail -c 3000 $log
