//! The channel between the nodes of one cache: its name on the lock
//! service and its messages — purges of edge-tier answers, heartbeats that
//! prove a node hears the channel, and announcements of downloads to follow.

/// The channel of the nodes whose lock keys start with `prefix`.
pub fn name(prefix: &str) -> String {
    format!("{prefix}edge-cache")
}

/// The channel of `channel` that only `node` listens on: its own heartbeats.
pub fn heartbeats(channel: &str, node: &str) -> String {
    format!("{channel}/{node}")
}

const PURGE: &str = "purge\n";
const HEARTBEAT: &str = "heartbeat\n";
const DOWNLOAD: &str = "download\n";

/// One message on the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// Forget what is kept for these request paths.
    Purge(Vec<&'a str>),
    /// The node named so is alive and hears the channel.
    Heartbeat(&'a str),
    /// The object `key` is being downloaded at the node at `url`; with no
    /// URL, that download ended.
    Download {
        /// Its storage key.
        key: &'a str,
        /// Where peers follow it.
        url: Option<&'a str>,
    },
}

impl Message<'_> {
    /// The message as sent.
    pub fn encode(&self) -> String {
        match self {
            Message::Purge(paths) => format!("{PURGE}{}", paths.join("\n")),
            Message::Heartbeat(node) => format!("{HEARTBEAT}{node}"),
            Message::Download { key, url: Some(url) } => format!("{DOWNLOAD}{key}\n{url}"),
            Message::Download { key, url: None } => format!("{DOWNLOAD}{key}"),
        }
    }

    /// Read a message; none for anything else.
    pub fn decode(text: &str) -> Option<Message<'_>> {
        if let Some(paths) = text.strip_prefix(PURGE) {
            return Some(Message::Purge(paths.split('\n').collect()));
        }
        if let Some(node) = text.strip_prefix(HEARTBEAT) {
            return Some(Message::Heartbeat(node));
        }
        let download = text.strip_prefix(DOWNLOAD)?;
        Some(match download.split_once('\n') {
            Some((key, url)) => Message::Download { key, url: Some(url) },
            None => Message::Download { key: download, url: None },
        })
    }
}

/// The purge of `paths` as messages of at most `max` bytes each (a path
/// longer than that goes alone).
pub fn purges(paths: &[String], max: usize) -> Vec<String> {
    let max = max.max(PURGE.len() + 256);
    let mut messages = Vec::new();
    let mut message = String::from(PURGE);
    for path in paths {
        if message.len() > PURGE.len() && message.len() + path.len() + 1 > max {
            messages.push(std::mem::replace(&mut message, String::from(PURGE)));
        }
        if message.len() > PURGE.len() {
            message.push('\n');
        }
        message.push_str(path);
    }
    messages.push(message);
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for m in [
            Message::Purge(vec!["/a.narinfo", "/nar/b.nar"]),
            Message::Heartbeat("0123456789abcdef"),
            Message::Download { key: "nar/x.nar", url: Some("http://node:8501") },
            Message::Download { key: "nar/x.nar", url: None },
        ] {
            assert_eq!(Message::decode(&m.encode()), Some(m.clone()));
        }
        assert_eq!(Message::decode("hello"), None);
        assert_eq!(name("ncps:lock:"), "ncps:lock:edge-cache");
    }

    #[test]
    fn purges_are_split_to_the_channel_limit() {
        let paths: Vec<String> = (0..20).map(|i| format!("/{i:032}.narinfo")).collect();
        let sent = purges(&paths, 300);
        assert!(sent.len() > 1 && sent.iter().all(|m| m.len() <= 300 && m.starts_with(PURGE)), "{sent:?}");
        let all: Vec<&str> = sent
            .iter()
            .flat_map(|m| match Message::decode(m) {
                Some(Message::Purge(p)) => p,
                _ => panic!("not a purge: {m}"),
            })
            .collect();
        assert_eq!(all, paths.iter().map(String::as_str).collect::<Vec<_>>());
    }
}
