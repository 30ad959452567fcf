# The image's final clean-up, as virt-dib's (after remount-root.sh): an empty /tmp, empty
# logs (where the tree has a /var/log: diskimage-builder's fake-os has none), no root's *.log.
set -e
root=$MICRODIB_SYSROOT
find "$root/tmp" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
if [ -d "$root/var/log" ]; then find "$root/var/log" -type f -exec truncate -s 0 {} +; fi
if [ -d "$root/root" ]; then find "$root/root" -type f -name '*.log' -delete; fi
