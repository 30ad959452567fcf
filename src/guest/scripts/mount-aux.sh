# Binds the aux tree into the target at /tmp/in_target.aux.
set -e
mkdir -p "$MICRODIB_SYSROOT$MICRODIB_IN_TARGET_AUX"
mount --rbind "$MICRODIB_AUX" "$MICRODIB_SYSROOT$MICRODIB_IN_TARGET_AUX"
