# Writes the layer's config.yaml (CONFIG) and params.yaml (PARAMS).
set -e
printf '%s' "$1" > "$MICRODIB_BLOCK_WORK/config.yaml"
printf '%s' "$2" > "$MICRODIB_BLOCK_WORK/params.yaml"
