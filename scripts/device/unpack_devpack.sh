# Sourced by the device scripts, from the repository root: unpacks .devcarry/devpack.tar.xz
# (scripts/device/server_pack.sh) into /tmp/dp and sets `pack` (the folder: bin/, lib/,
# python/, server/spanserve, a wrapper) and `libs` (its LD_LIBRARY_PATH).
python3 -c "import tarfile; tarfile.open('.devcarry/devpack.tar.xz').extractall('/tmp/dp')" || exit 1
pack=/tmp/dp/devpack
libs=$pack/lib
for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [[ -d $dir ]] && libs=$libs:$dir
done
# Only the packed programs see the packed libraries (Debian's libstdc++ is older than Python's).
mkdir -p "$pack/server"
printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s/bin/spanserve "$@"\n' "$libs" "$pack" \
  > "$pack/server/spanserve"
chmod +x "$pack/server/spanserve"
# The tests find their data under the source directory compiled into them.
built_in=$(cat "$pack/source_dir.txt")
[[ -e $built_in/tests/data ]] || { mkdir -p "$(dirname "$built_in")"; ln -sfn "$PWD" "$built_in"; }
