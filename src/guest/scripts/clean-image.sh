# The image's final clean-up, as virt-dib's (after remount-root.sh): an empty /tmp, empty
# logs, no root's *.log.
set -e
root=$MICRODIB_SYSROOT
find "$root/tmp" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
[ -d "$root/var/log" ] || { echo "the image has no /var/log" >&2; exit 1; }
find "$root/var/log" -type f -exec truncate -s 0 {} +
if [ -d "$root/root" ]; then find "$root/root" -type f -name '*.log' -delete; fi
