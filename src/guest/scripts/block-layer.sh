# Runs `python3 -m diskimage_builder.block_device.cmd ARGS...`. Its commands run through sudo:
# the fake one (we are root). No udev runs in the appliance, so device-mapper makes its own nodes.
export PATH="$MICRODIB_AUX/fake-bin:$PATH" HOME="$MICRODIB_BLOCK_WORK/home"
export PYTHONPATH="$MICRODIB_BLOCK_PYTHON" DM_DISABLE_UDEV=1
export DIB_BLOCK_DEVICE_PARAMS_YAML="$MICRODIB_BLOCK_WORK/params.yaml"
exec python3 -m diskimage_builder.block_device.cmd "$@"
