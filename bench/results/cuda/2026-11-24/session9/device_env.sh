# Sourced by this session's device scripts: unpacks .pack/cuda.tar.xz to /tmp/p and sets
# pack= and LD_LIBRARY_PATH (the machine's CUDA libraries, else PyTorch's wheels').
mkdir -p /tmp/p && tar -xJf .pack/cuda.tar.xz -C /tmp/p
pack=/tmp/p/cuda
libs=$pack/lib
for dir in /usr/local/cuda/lib64 $(python3 -c 'import nvidia, os; p = nvidia.__path__[0]; print(" ".join(os.path.join(p, d, "lib") for d in ("cu13", "cublas", "cuda_runtime")))' 2>/dev/null); do
  [[ -d $dir ]] && libs=$libs:$dir
done
export LD_LIBRARY_PATH=$libs
built_in=$(cat "$pack/source_dir.txt" 2>/dev/null || echo "$PWD")
[[ -e $built_in/tests/data ]] || { mkdir -p "$(dirname "$built_in")" && ln -sfn "$PWD" "$built_in"; }
nvidia-smi --query-gpu=name,clocks.sm --format=csv
