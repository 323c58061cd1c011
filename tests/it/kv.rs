//! The Redis and Memcached stores against the real services: a message sent
//! over SMTP to the real server lands in the cache exactly as SQLite stored
//! it, and a cache that is down or cut never costs a message its `250`
//! unless the cache is a required store, which then answers `451`.
//!
//! "Down" is a [`Proxy`](crate::proxy::Proxy) in front of the shared
//! service that a test cuts and restores: the service other tests use
//! keeps running.

/// What both stores' tests use: the server with one more store, and the
/// answer while it is down.
#[cfg(any(feature = "redis", feature = "memcached"))]
mod support {
    use gsmtpd::config::{Backend, StoreConfig};

    use crate::harness::{Reply, Server};

    /// Starts the server with the test SQLite store followed by `extra`.
    pub(super) async fn start(extra: Backend, optional: bool) -> Server {
        Server::start_with(move |c| {
            c.store.push(StoreConfig {
                optional,
                backend: extra,
                ..StoreConfig::default()
            })
        })
        .await
    }

    #[track_caller]
    pub(super) fn assert_451(r: &Reply) {
        assert_eq!((r.code, r.text.get(..5)), (451, Some("4.3.0")), "{r:?}");
    }
}

#[cfg(feature = "redis")]
mod redis_store {
    use std::io::Read;

    use ::redis::aio::MultiplexedConnection;
    use gsmtpd::config::{Backend, Compression, RedisConfig};

    use super::support::{assert_451, start};
    use crate::harness::{self, mime, unique};
    use crate::proxy::Proxy;

    const VAR: &str = "GSMTPD_TEST_REDIS_URL";
    const TTL: i64 = 600;
    /// Longer than the store's reconnect attempts take to give up.
    const OUTAGE: std::time::Duration = std::time::Duration::from_secs(3);

    /// A port that refuses connections (bound, then released).
    async fn closed_port() -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }

    fn backend(url: &str, prefix: &str, compression: Compression) -> Backend {
        Backend::Redis(RedisConfig {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            ttl_secs: TTL as u64,
            compression,
            timeout_secs: 5,
        })
    }

    /// A connection of the test's own, to read what the server wrote.
    async fn connect(url: &str) -> MultiplexedConnection {
        let client = ::redis::Client::open(url).unwrap_or_else(|e| panic!("{VAR}={url}: {e}"));
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| "timed out".to_owned())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .unwrap_or_else(|e| panic!("{VAR}={url} is set but Redis does not answer: {e}"))
    }

    async fn query<T: ::redis::FromRedisValue>(
        conn: &mut MultiplexedConnection,
        args: &[&str],
    ) -> T {
        let mut cmd = ::redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(conn)
            .await
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    async fn value(conn: &mut MultiplexedConnection, key: &str) -> Vec<u8> {
        query::<Option<Vec<u8>>>(conn, &["GET", key])
            .await
            .unwrap_or_else(|| panic!("no key {key}"))
    }

    #[track_caller]
    fn assert_ttl(ttl: i64, key: &str) {
        assert!(ttl > 0 && ttl <= TTL, "TTL of {key} is {ttl}");
    }

    async fn forget(conn: &mut MultiplexedConnection, prefix: &str) {
        let keys: Vec<String> = query(conn, &["KEYS", &format!("{prefix}*")]).await;
        for k in keys {
            let _: i64 = query(conn, &["DEL", &k]).await;
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_mime_message_lands_as_sqlite_stored_it() {
        let Some(url) = harness::service_url(VAR) else {
            return;
        };
        let mut redis = connect(&url).await;
        let prefix = format!("{}:", unique("gsmtpd-test-plain"));
        let server = start(backend(&url, &prefix, Compression::None), false).await;
        let mut c = server.client().await;
        let first = mime("first");
        let id1 = c
            .send_message(
                "s@sender.test",
                &["Alice@Example.com", "bob@example.com"],
                &first,
            )
            .await
            .queued_id();
        let id2 = c
            .send_message("s@sender.test", &["alice@example.com"], &mime("second"))
            .await
            .queued_id();

        for id in [&id1, &id2] {
            let key = format!("{prefix}{id}");
            let stored = server.raw(id);
            assert_eq!(value(&mut redis, &key).await, stored, "{key}");
            assert_ttl(query(&mut redis, &["TTL", &key]).await, &key);
        }
        assert_eq!(harness::content(&server.raw(&id1)), &first[..]);

        // One list per recipient, lower-cased, ids in arrival order.
        for (rcpt, ids) in [
            ("alice@example.com", vec![id1.clone(), id2.clone()]),
            ("bob@example.com", vec![id1.clone()]),
        ] {
            let list = format!("{prefix}rcpt:{rcpt}");
            let got: Vec<String> = query(&mut redis, &["LRANGE", &list, "0", "-1"]).await;
            assert_eq!(got, ids, "{list}");
            assert_ttl(query(&mut redis, &["TTL", &list]).await, &list);
        }
        let mixed: i64 = query(
            &mut redis,
            &["EXISTS", &format!("{prefix}rcpt:Alice@Example.com")],
        )
        .await;
        assert_eq!(mixed, 0, "recipient keys are lower-cased");

        server.shutdown().await;
        forget(&mut redis, &prefix).await;
    }

    /// Concurrent connections make the writer commit several messages in
    /// one MULTI/EXEC: every one of them must be there.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_batch_of_concurrent_messages_all_land() {
        let Some(url) = harness::service_url(VAR) else {
            return;
        };
        let mut redis = connect(&url).await;
        let prefix = format!("{}:", unique("gsmtpd-test-batch"));
        let server = start(backend(&url, &prefix, Compression::None), false).await;
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let addr = server.addr;
                tokio::spawn(async move {
                    let mut c = crate::harness::Client::connect(addr).await;
                    let mut ids = Vec::new();
                    for j in 0..3 {
                        let body = format!("Subject: {i}/{j}\r\n\r\nbody {i}/{j}\r\n");
                        let r = c
                            .send_message("s@sender.test", &["many@example.com"], body.as_bytes())
                            .await;
                        ids.push(r.queued_id());
                    }
                    ids
                })
            })
            .collect();
        let mut sent = Vec::new();
        for t in tasks {
            sent.extend(t.await.unwrap());
        }
        let list = format!("{prefix}rcpt:many@example.com");
        let mut listed: Vec<String> = query(&mut redis, &["LRANGE", &list, "0", "-1"]).await;
        listed.sort();
        sent.sort();
        assert_eq!(listed, sent);
        for id in &sent {
            assert_eq!(
                value(&mut redis, &format!("{prefix}{id}")).await,
                server.raw(id)
            );
        }
        server.shutdown().await;
        forget(&mut redis, &prefix).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn zlib_values_decompress_to_the_stored_message() {
        let Some(url) = harness::service_url(VAR) else {
            return;
        };
        let mut redis = connect(&url).await;
        let prefix = format!("{}:", unique("gsmtpd-test-zlib"));
        let server = start(backend(&url, &prefix, Compression::Zlib), false).await;
        let mut c = server.client().await;
        // Repetitive, so compression must make it smaller.
        let mut content = mime("zlib");
        content.extend(b"Lorem ipsum dolor sit amet.\r\n".repeat(200));
        let id = c
            .send_message("s@sender.test", &["carol@example.com"], &content)
            .await
            .queued_id();
        let key = format!("{prefix}{id}");
        let stored = server.raw(&id);
        let z = value(&mut redis, &key).await;
        assert!(
            z.len() < stored.len() / 2,
            "{} vs {}",
            z.len(),
            stored.len()
        );
        let mut back = Vec::new();
        flate2::read::ZlibDecoder::new(&z[..])
            .read_to_end(&mut back)
            .expect("a zlib stream (RFC 1950)");
        assert_eq!(back, stored);
        assert_ttl(query(&mut redis, &["TTL", &key]).await, &key);
        let list = format!("{prefix}rcpt:carol@example.com");
        let ids: Vec<String> = query(&mut redis, &["LRANGE", &list, "0", "-1"]).await;
        assert_eq!(ids, [id]);
        server.shutdown().await;
        forget(&mut redis, &prefix).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_unreachable_optional_redis_costs_no_message() {
        // Needs no Redis at all, but belongs with the others.
        let url = format!("redis://{}/", closed_port().await);
        let server = start(backend(&url, "unused:", Compression::None), true).await;
        let mut c = server.client().await;
        for n in 0..3 {
            let id = c
                .send_message(
                    "s@sender.test",
                    &["r@example.com"],
                    format!("Subject: {n}\r\n\r\n").as_bytes(),
                )
                .await
                .queued_id();
            assert!(
                server
                    .raw(&id)
                    .ends_with(format!("Subject: {n}\r\n\r\n").as_bytes())
            );
        }
        assert_eq!(server.count(), 3);
        server.shutdown().await;
    }

    /// A required Redis that is down at start lets the server start (the
    /// choice documented in `store::redis`), answers `451` while it is
    /// down or cut, and takes mail again once it is back, without restart.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_required_redis_down_or_cut_answers_451_until_it_is_back() {
        let Some(url) = harness::service_url(VAR) else {
            return;
        };
        let mut redis = connect(&url).await;
        let (mut proxy, proxied) = Proxy::in_front_of(&url, 6379).await;
        proxy.cut().await;
        let prefix = format!("{}:", unique("gsmtpd-test-cut"));
        let server = start(backend(&proxied, &prefix, Compression::None), false).await;
        let mut c = server.client().await;
        let send = |n: &str| format!("Subject: {n}\r\n\r\n").into_bytes();

        let r = c
            .send_message("s@sender.test", &["d@example.com"], &send("down at start"))
            .await;
        assert_451(&r);

        // A long outage: the store's reconnect attempts have all failed
        // by the time Redis is back, and the first message must still pass.
        tokio::time::sleep(OUTAGE).await;
        proxy.restore().await;
        let id1 = c
            .send_message("s@sender.test", &["d@example.com"], &send("back"))
            .await
            .queued_id();
        assert_eq!(
            value(&mut redis, &format!("{prefix}{id1}")).await,
            server.raw(&id1)
        );

        proxy.cut().await;
        let r = c
            .send_message("s@sender.test", &["d@example.com"], &send("cut"))
            .await;
        assert_451(&r);

        tokio::time::sleep(OUTAGE).await;
        proxy.restore().await;
        let id2 = c
            .send_message("s@sender.test", &["d@example.com"], &send("back again"))
            .await
            .queued_id();
        assert_eq!(
            value(&mut redis, &format!("{prefix}{id2}")).await,
            server.raw(&id2)
        );
        // The 451s left nothing in Redis: the list holds the two 250s only.
        let list = format!("{prefix}rcpt:d@example.com");
        let ids: Vec<String> = query(&mut redis, &["LRANGE", &list, "0", "-1"]).await;
        assert_eq!(ids, [id1, id2]);
        server.shutdown().await;
        forget(&mut redis, &prefix).await;
    }

    #[tokio::test]
    async fn a_bad_url_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = harness::test_config(&dir.path().join("m.db"));
        config.store.push(gsmtpd::config::StoreConfig {
            backend: backend("http://127.0.0.1:6379/", "p:", Compression::None),
            ..Default::default()
        });
        let err = gsmtpd::Backends::open(&config)
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("invalid url"), "{err}");
    }
}

#[cfg(feature = "memcached")]
mod memcached_store {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;

    use gsmtpd::config::{Backend, MemcachedConfig};

    use super::support::{assert_451, start};
    use crate::harness::{self, Server, mime, unique};
    use crate::proxy::{Proxy, service_addr};

    const VAR: &str = "GSMTPD_TEST_MEMCACHED_URL";
    const TTL: i64 = 600;

    fn backend(url: &str, max_value_size: usize) -> Backend {
        Backend::Memcached(MemcachedConfig {
            url: url.to_owned(),
            ttl_secs: TTL as u64,
            timeout_secs: 5,
            max_value_size,
        })
    }

    /// The test's own text-protocol connection, to read what the server
    /// wrote with nothing of the store's client in between.
    struct Mc(BufReader<TcpStream>);

    impl Mc {
        async fn connect(url: &str) -> Self {
            let addr = service_addr(url, 11211).await;
            let stream =
                tokio::time::timeout(std::time::Duration::from_secs(5), TcpStream::connect(addr))
                    .await
                    .map_err(|_| "timed out".to_owned())
                    .and_then(|r| r.map_err(|e| e.to_string()))
                    .unwrap_or_else(|e| {
                        panic!("{VAR}={url} is set but memcached does not answer: {e}")
                    });
            Self(BufReader::new(stream))
        }

        async fn line(&mut self) -> String {
            let mut l = String::new();
            self.0.read_line(&mut l).await.unwrap();
            assert!(l.ends_with("\r\n"), "{l:?}");
            l.truncate(l.len() - 2);
            l
        }

        /// `get <key>`: the value, or `None` on a miss.
        async fn get(&mut self, key: &str) -> Option<Vec<u8>> {
            self.0
                .get_mut()
                .write_all(format!("get {key}\r\n").as_bytes())
                .await
                .unwrap();
            let head = self.line().await;
            if head == "END" {
                return None;
            }
            // VALUE <key> <flags> <bytes>
            let len: usize = head
                .rsplit(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{head:?}"));
            let mut data = vec![0; len + 2];
            self.0.read_exact(&mut data).await.unwrap();
            assert_eq!(self.line().await, "END");
            data.truncate(len);
            Some(data)
        }

        /// `mg <key> t`: the remaining TTL in seconds (-1: none).
        async fn ttl(&mut self, key: &str) -> i64 {
            self.0
                .get_mut()
                .write_all(format!("mg {key} t\r\n").as_bytes())
                .await
                .unwrap();
            let l = self.line().await;
            l.strip_prefix("HD t")
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("mg {key} t: {l:?}"))
        }

        /// The server's item size limit (`-I`).
        async fn item_size_max(&mut self) -> usize {
            self.0
                .get_mut()
                .write_all(b"stats settings\r\n")
                .await
                .unwrap();
            let mut max = None;
            loop {
                let l = self.line().await;
                if l == "END" {
                    return max.expect("item_size_max in stats settings");
                }
                if let Some(v) = l.strip_prefix("STAT item_size_max ") {
                    max = v.parse().ok();
                }
            }
        }
    }

    /// Each accepted recipient's hash, as SQLite recorded it.
    fn hashes(server: &Server, id: &str) -> Vec<String> {
        let db = server.db();
        let mut st = db
            .prepare("SELECT hash FROM recipients WHERE message_id = ?1 ORDER BY position")
            .unwrap();
        let hashes: Vec<String> = st
            .query_map([id], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for h in &hashes {
            assert_eq!(h.len(), 32, "{id}: hash {h:?}");
        }
        hashes
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn each_recipient_hash_holds_the_stored_message() {
        let Some(url) = harness::service_url(VAR) else {
            return;
        };
        let mut mc = Mc::connect(&url).await;
        let server = start(backend(&url, 1_048_576), false).await;
        let mut c = server.client().await;
        let id = c
            .send_message(
                "s@sender.test",
                &["alice@example.com", "bob@example.com"],
                &mime(&unique("memcached")),
            )
            .await
            .queued_id();
        let stored = server.raw(&id);
        let hashes = hashes(&server, &id);
        assert_eq!(hashes.len(), 2);
        assert_ne!(hashes[0], hashes[1], "the hash covers the recipient");
        for h in &hashes {
            assert_eq!(mc.get(h).await.as_deref(), Some(&stored[..]), "get {h}");
            let ttl = mc.ttl(h).await;
            assert!(ttl > 0 && ttl <= TTL, "TTL of {h} is {ttl}");
        }
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_message_over_max_value_size_is_acknowledged_and_not_cached() {
        let Some(url) = harness::service_url(VAR) else {
            return;
        };
        let mut mc = Mc::connect(&url).await;
        let server = start(backend(&url, 4096), false).await;
        let mut c = server.client().await;
        let mut big = mime(&unique("big"));
        big.extend(b"0123456789abcdef0123456789abcdef\r\n".repeat(200));
        let big_id = c
            .send_message("s@sender.test", &["big@example.com"], &big)
            .await
            .queued_id();
        assert!(server.raw(&big_id).len() > 4096);
        let small_id = c
            .send_message(
                "s@sender.test",
                &["big@example.com"],
                &mime(&unique("small")),
            )
            .await
            .queued_id();
        assert!(server.raw(&small_id).len() <= 4096);
        let [big_hash] = &hashes(&server, &big_id)[..] else {
            panic!("one recipient")
        };
        let [small_hash] = &hashes(&server, &small_id)[..] else {
            panic!("one recipient")
        };
        assert_eq!(
            mc.get(big_hash).await,
            None,
            "over max_value_size: not cached"
        );
        assert_eq!(mc.get(small_hash).await, Some(server.raw(&small_id)));
        server.shutdown().await;
    }

    /// `max_value_size` set above the server's own limit: memcached
    /// refuses the item, the message still gets its `250`, and the
    /// connection stays usable for the next one.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_value_the_server_refuses_as_too_large_is_not_an_error() {
        let Some(url) = harness::service_url(VAR) else {
            return;
        };
        let mut mc = Mc::connect(&url).await;
        let limit = mc.item_size_max().await;
        let server = start(backend(&url, 4 * limit), false).await;
        let mut c = server.client().await;
        let mut big = mime(&unique("refused"));
        let line = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n";
        big.extend(line.repeat(limit / line.len() + 1));
        let big_id = c
            .send_message("s@sender.test", &["big@example.com"], &big)
            .await
            .queued_id();
        assert!(server.raw(&big_id).len() > limit);
        let small_id = c
            .send_message(
                "s@sender.test",
                &["big@example.com"],
                &mime(&unique("after")),
            )
            .await
            .queued_id();
        assert_eq!(mc.get(&hashes(&server, &big_id)[0]).await, None);
        assert_eq!(
            mc.get(&hashes(&server, &small_id)[0]).await,
            Some(server.raw(&small_id))
        );
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_required_memcached_down_or_cut_answers_451_until_it_is_back() {
        let Some(url) = harness::service_url(VAR) else {
            return;
        };
        let mut mc = Mc::connect(&url).await;
        let (mut proxy, proxied) = Proxy::in_front_of(&url, 11211).await;
        proxy.cut().await;
        let server = start(backend(&proxied, 1_048_576), false).await;
        let mut c = server.client().await;
        let rcpt = ["e@example.com"];

        let r = c
            .send_message("s@sender.test", &rcpt, &mime(&unique("down")))
            .await;
        assert_451(&r);

        proxy.restore().await;
        let id = c
            .send_message("s@sender.test", &rcpt, &mime(&unique("back")))
            .await
            .queued_id();
        assert_eq!(
            mc.get(&hashes(&server, &id)[0]).await,
            Some(server.raw(&id))
        );

        proxy.cut().await;
        let r = c
            .send_message("s@sender.test", &rcpt, &mime(&unique("cut")))
            .await;
        assert_451(&r);

        proxy.restore().await;
        let id = c
            .send_message("s@sender.test", &rcpt, &mime(&unique("back again")))
            .await
            .queued_id();
        assert_eq!(
            mc.get(&hashes(&server, &id)[0]).await,
            Some(server.raw(&id))
        );
        server.shutdown().await;
    }
}
