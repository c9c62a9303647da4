//! Packets to one loopback port dropped by the kernel (`tc`): a peer behind
//! a partition, for connections already open as for new ones. A stalled
//! [`crate::StallProxy`] cannot stand in for that: its kernel acknowledges
//! every byte it holds, so a sender's `TCP_USER_TIMEOUT` never fires.
//!
//! It takes loopback's root qdisc (an HTB class that queues nothing, fed by
//! a `u32` filter on the destination port; the `drop` action needs a kernel
//! module containers often lack). One at a time per machine: a second one
//! in the same process waits until the first is dropped (test binaries run
//! one after another).

use std::process::Command;
use std::sync::{Mutex, MutexGuard};

/// Held by the one [`DroppedPort`] of this process.
static LOOPBACK: Mutex<()> = Mutex::new(());

/// Drops every packet sent to a loopback port while it lives.
pub struct DroppedPort {
    _loopback: MutexGuard<'static, ()>,
}

fn tc(args: &str) -> Result<(), String> {
    let out = Command::new("tc")
        .args(args.split_whitespace())
        .output()
        .map_err(|e| format!("`tc {args}`: {e} (needs iproute2)"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!("`tc {args}`: {} (needs CAP_NET_ADMIN)", String::from_utf8_lossy(&out.stderr).trim()))
}

impl DroppedPort {
    /// Start dropping packets sent to `port` on loopback, or say why not.
    pub fn new(port: u16) -> Result<DroppedPort, String> {
        // A test that panicked while it held loopback left it whole: its
        // guard was dropped, and with it the qdisc.
        let loopback = LOOPBACK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // What a killed run left behind.
        let _ = tc("qdisc del dev lo root");
        let steps = [
            "qdisc add dev lo root handle 1: htb default 10".to_owned(),
            "class add dev lo parent 1: classid 1:10 htb rate 100gbit quantum 200000".to_owned(),
            "class add dev lo parent 1: classid 1:20 htb rate 8bit quantum 1500".to_owned(),
            "qdisc add dev lo parent 1:20 handle 20: pfifo limit 0".to_owned(),
            format!("filter add dev lo parent 1: protocol ip prio 1 u32 match ip dport {port} 0xffff flowid 1:20"),
        ];
        let dropped = DroppedPort { _loopback: loopback };
        for step in &steps {
            tc(step)?;
        }
        Ok(dropped)
    }
}

impl Drop for DroppedPort {
    /// Loopback forwards everything again.
    fn drop(&mut self) {
        let _ = tc("qdisc del dev lo root");
    }
}
