# The aux tree lives in a tmpfs in the appliance; it is bound into the target at
# /tmp/in_target.aux (mount-aux.sh) and the helper drive is mounted inside it at perm/.
set -e
mkdir -p "$MICRODIB_AUX" "$MICRODIB_SYSROOT"
mount -t tmpfs -o mode=0755 aux "$MICRODIB_AUX"
