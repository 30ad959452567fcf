# Names the build VM's disks by their serials: $MICRODIB_DISKS/<serial> -> /dev/vdX.
# Backends attach disks in different orders (qemu's virtio-mmio slots are not ours), so no
# guest script may find a disk by its position. Arguments: the serials that must be there.
set -e
mkdir -p "$MICRODIB_DISKS"
for b in /sys/block/vd*; do
    serial=$(cat "$b/serial" 2>/dev/null) || continue
    case $serial in
        microdib-*) ln -sfn "/dev/${b##*/}" "$MICRODIB_DISKS/$serial" ;;
    esac
done
for want in "$@"; do
    [ -b "$MICRODIB_DISKS/$want" ] || { echo "the build VM has no disk with serial $want" >&2; exit 1; }
done
