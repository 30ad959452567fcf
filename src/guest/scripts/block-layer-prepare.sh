# diskimage-builder's block-device layer: the scratch disk (BUILD_DEV) holds the tree until the
# layer has made the image on the target disk (TARGET_DEV).
set -e
build=$1 target=$2 work=$MICRODIB_BLOCK_WORK root=$MICRODIB_SYSROOT
mkfs.ext4 -q -F "$build"
mkdir -p "$root" "$work/image" "$work/home"
mount "$build" "$root"
rmdir "$root/lost+found"
ln -sfn "$root" "$work/built"
# The layer's loop image is the target disk itself, so its partitions are what the host writes.
ln -sfn "$target" "$work/image/image0.raw"
mkdir -p "$root/tmp"
