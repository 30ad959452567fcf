//! The i8042 keyboard controller, reduced to what a microVM needs: the guest's `reboot=k`
//! writes 0xfe to port 0x64 (pulse the CPU reset line), which ends the VM.

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use super::PioDevice;
use crate::exit::{ExitLatch, GuestExit};

/// First i8042 port (data); the command/status port is base + 4.
pub const I8042_PORT: u16 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_LEN: u16 = 5;

/// Fires the VM's exit latch with `GuestExit::Reset`.
pub struct ResetTrigger(pub Arc<ExitLatch>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.set(GuestExit::Reset);
        Ok(())
    }
}

/// The controller on the port bus.
pub struct ResetController {
    dev: I8042Device<ResetTrigger>,
}

impl ResetController {
    pub fn new(latch: Arc<ExitLatch>) -> Self {
        ResetController { dev: I8042Device::new(ResetTrigger(latch)) }
    }
}

impl PioDevice for ResetController {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty; the guest's reset path waits on it.
        let v = u8::try_from(offset).map(|o| self.dev.read(o)).unwrap_or(0xff);
        data.fill(v);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if let (1, Ok(off)) = (data.len(), u8::try_from(offset)) {
            let _ = self.dev.write(off, data[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_fires_the_latch_and_nothing_else_does() {
        let latch = Arc::new(ExitLatch::default());
        let mut kbd = ResetController::new(latch.clone());
        kbd.write(0, &[0xfe]); // data port: not a command
        kbd.write(4, &[0xaa]); // self-test command: ignored
        kbd.write(4, &[0xfe, 0]); // wrong access size
        assert_eq!(latch.get(), None);
        let mut s = [0xffu8];
        kbd.read(4, &mut s);
        assert_eq!(s, [0]);
        kbd.write(4, &[0xfe]);
        assert_eq!(latch.get(), Some(GuestExit::Reset));
    }
}
