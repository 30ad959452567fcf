# The executable scripts of a phase directory (PHASE), as the guest has them now.
cd "$MICRODIB_AUX/hooks/$1" 2>/dev/null || exit 0
for f in *; do
    if [ -f "$f" ] && [ -x "$f" ]; then echo "$f"; fi
done
