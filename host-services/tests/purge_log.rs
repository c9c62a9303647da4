//! The purge log on a real Redis (`NCPS_TEST_REDIS_ADDR`): what a native
//! node publishes is numbered and kept, and the read script (the one Spin
//! nodes run) returns the purges after a number and says when some may be
//! missing; a native node's heartbeat says how far the log stood.

use std::time::Duration;

use futures_util::StreamExt as _;
use ncps_edge_host_services::cluster::channel::redis::RedisChannel;
use ncps_edge_host_services::cluster::channel::{publish_purge, Channel as _};
use ncps_edge_host_services::locks::redis::RedisOptions;
use ncps_edge_test_support as support;
use ncps_edge_wire::channel::{self, Message};
use ncps_edge_wire::purge_log::{self, Read};

async fn read(conn: &mut redis::aio::MultiplexedConnection, keys: &[String; 2], after: &str) -> Read {
    let items: Vec<Vec<u8>> = redis::Script::new(purge_log::READ)
        .key(&keys[0])
        .key(&keys[1])
        .arg(after)
        .arg(purge_log::READ_MAX)
        .invoke_async(conn)
        .await
        .expect("the read script runs");
    Read::parse(&items).expect("the read script's answer")
}

fn paths(read: &Read) -> Vec<String> {
    let mut all: Vec<String> = read
        .messages
        .iter()
        .flat_map(|m| match Message::decode(m) {
            Some(Message::Purge(p)) => p.into_iter().map(str::to_owned).collect::<Vec<String>>(),
            other => panic!("not a purge: {other:?}"),
        })
        .collect();
    all.sort();
    all
}

/// A node's channel under a prefix of its own, the keys of its purge log,
/// and a client of the same Redis.
fn channel_of_a_node(name: &str) -> (RedisChannel, String, [String; 2], redis::Client) {
    let prefix = format!("{}:", support::unique(name));
    let opts = RedisOptions { addrs: vec![support::redis_addr()], ..Default::default() };
    let node = RedisChannel::new(&opts, &prefix).expect("the channel");
    let keys = purge_log::keys(&channel::name(&prefix));
    let client = redis::Client::open(format!("redis://{}", support::redis_addr())).unwrap();
    (node, channel::name(&prefix), keys, client)
}

#[tokio::test]
async fn purges_are_kept_in_order_and_a_reader_hears_of_gaps() {
    let (node, _, keys, client) = channel_of_a_node("purge-log");
    let mut conn = client.get_multiplexed_async_connection().await.expect("Redis");

    // A reader that never read starts over, whatever the log holds.
    let empty = read(&mut conn, &keys, "").await;
    assert_eq!((empty.last, empty.gap, empty.messages.len()), (0, true, 0));
    let path = |i: u64| format!("/{i:032}.narinfo");
    publish_purge(&node, &[path(0)]).await.expect("published");
    let first = read(&mut conn, &keys, "").await;
    assert!(first.gap && first.last > 1_000_000_000_000_000, "numbered from the time in µs: {first:?}");
    let base = first.last;
    for i in 1..3 {
        publish_purge(&node, &[path(i)]).await.expect("published");
    }
    let both = read(&mut conn, &keys, &base.to_string()).await;
    assert_eq!((both.last, both.gap, paths(&both)), (base + 2, false, vec![path(1), path(2)]));
    let rest = read(&mut conn, &keys, &(base + 1).to_string()).await;
    assert_eq!((rest.last, rest.gap, paths(&rest)), (base + 2, false, vec![path(2)]));
    let none = read(&mut conn, &keys, &(base + 2).to_string()).await;
    assert_eq!((none.last, none.gap, none.messages.len()), (base + 2, false, 0));

    // Purges trimmed from the log: the reader is told it missed some.
    let _: i64 = redis::cmd("XTRIM").arg(&keys[0]).arg("MAXLEN").arg(1).query_async(&mut conn).await.unwrap();
    let trimmed = read(&mut conn, &keys, &base.to_string()).await;
    assert_eq!((trimmed.last, trimmed.gap, paths(&trimmed)), (base + 2, true, vec![path(2)]));
    // Redis lost the log, and more purges came than the reader had seen:
    // the numbers still go forward, and the reader is told of the gap.
    let _: i64 = redis::cmd("DEL").arg(&keys[0]).arg(&keys[1]).query_async(&mut conn).await.unwrap();
    for i in 0..4 {
        publish_purge(&node, &[path(i)]).await.expect("published");
    }
    let restarted = read(&mut conn, &keys, &(base + 2).to_string()).await;
    assert!(restarted.gap && restarted.last > base + 2, "{restarted:?}");
    let _: i64 = redis::cmd("DEL").arg(&keys[0]).arg(&keys[1]).query_async(&mut conn).await.unwrap();
}

#[tokio::test]
async fn a_heartbeat_says_how_far_the_purge_log_stood() {
    let (node, name, keys, client) = channel_of_a_node("purge-log-beat");
    let mut conn = client.get_multiplexed_async_connection().await.expect("Redis");
    let mut pubsub = client.get_async_pubsub().await.expect("Redis");
    pubsub.subscribe(channel::heartbeats(&name, "n1")).await.expect("subscribed");
    let mut heard = pubsub.into_on_message();
    let beat = Message::Heartbeat("n1").encode();
    let mut beat_heard = async || {
        node.heartbeat("n1", &beat).await.expect("published");
        let msg = tokio::time::timeout(Duration::from_secs(5), heard.next()).await.expect("heard").expect("a message");
        let text: String = msg.get_payload().expect("text");
        purge_log::heartbeat_position(&text).map(|(m, n)| (m.to_owned(), n))
    };
    assert_eq!(beat_heard().await, Some((beat.clone(), 0)), "no purge yet");
    publish_purge(&node, &["/a.narinfo".to_owned()]).await.expect("published");
    let newest: u64 = redis::cmd("GET").arg(&keys[1]).query_async(&mut conn).await.unwrap();
    assert_eq!(beat_heard().await, Some((beat.clone(), newest)));
    let _: i64 = redis::cmd("DEL").arg(&keys[0]).arg(&keys[1]).query_async(&mut conn).await.unwrap();
}
