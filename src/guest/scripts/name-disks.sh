# Names the build VM's disks by their serials: /run/microdib/disk/<serial> -> /dev/vdX.
# Backends attach disks in different orders (qemu's virtio-mmio slots are not ours), so no
# guest script may find a disk by its position.
set -e
dir=/run/microdib/disk
mkdir -p "$dir"
for b in /sys/block/vd*; do
    serial=$(cat "$b/serial" 2>/dev/null) || continue
    case $serial in
        microdib-*) ln -sfn "/dev/${b##*/}" "$dir/$serial" ;;
    esac
done
for want in "$@"; do
    [ -b "$dir/$want" ] || { echo "the build VM has no disk with serial $want" >&2; exit 1; }
done
