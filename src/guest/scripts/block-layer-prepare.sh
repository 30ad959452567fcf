# diskimage-builder's block-device layer: the scratch disk (BUILD_DEV) holds the tree until the
# layer has made the image on the target disk (TARGET_DEV). STATE: `fresh` (formatted here) or
# `restored` (a phase checkpoint's file system, mounted as it is).
set -e
build=$1 target=$2 state=$3 work=$MICRODIB_BLOCK_WORK root=$MICRODIB_SYSROOT
if [ "$state" = fresh ]; then mkfs.ext4 -q -F "$build"; fi
mkdir -p "$root" "$work/image" "$work/home"
mount "$build" "$root"
if [ "$state" = fresh ]; then rmdir "$root/lost+found"; fi
ln -sfn "$root" "$work/built"
# The layer's loop image is the target disk itself, so its partitions are what the host writes.
ln -sfn "$target" "$work/image/image0.raw"
mkdir -p "$root/tmp"
