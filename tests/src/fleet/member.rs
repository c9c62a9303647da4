//! A node of a fleet: an `ncps-edge` process, or a real `spin up` of the
//! composed component on the same backends.

use crate::process::{rss, NodeProcess};
use crate::spin_up::SpinUp;

/// One node of a fleet.
pub enum Member {
    /// `ncps-edge serve`.
    Native(NodeProcess),
    /// `spin up` of `spin.toml`.
    Spin(SpinUp),
}

impl Member {
    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        match self {
            Member::Native(n) => n.url.clone(),
            Member::Spin(s) => s.url(),
        }
    }

    /// Whether it is a Spin node.
    pub fn is_spin(&self) -> bool {
        matches!(self, Member::Spin(_))
    }

    /// Resident memory of the node's processes, bytes (`spin up` serves
    /// from a child process).
    pub fn rss(&self) -> Option<u64> {
        let pid = match self {
            Member::Native(n) => n.pid(),
            Member::Spin(s) => s.pid(),
        };
        let children = std::process::Command::new("pgrep").args(["-P", &pid.to_string()]).output().ok()?;
        let children: u64 =
            String::from_utf8_lossy(&children.stdout).split_whitespace().filter_map(|c| rss(c.parse().ok()?)).sum();
        Some(rss(pid)? + children)
    }

    /// What the node logged so far.
    pub fn log(&self) -> String {
        match self {
            Member::Native(n) => n.log(),
            Member::Spin(s) => s.log(),
        }
    }
}
