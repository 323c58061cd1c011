//! The recipient check (the original's `GSMTP_VERIFY_USERS`): a SQL query
//! run at RCPT against the database of one of the SQL stores. A row means
//! the mailbox exists; no row is `550 5.1.1`; an error or a timeout is
//! `451 4.3.0`, so a broken lookup never bounces mail.
//!
//! Answers are cached for `cache_ttl_secs`; failures never are.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Backend, Config, RecipientCheckConfig};
use crate::smtp::RecipientVerdict;
use crate::store::StoreError;

/// Cached answers are dropped wholesale past this many entries, so a
/// dictionary attack cannot grow the cache without bound.
const CACHE_CAPACITY: usize = 100_000;

/// Where the query runs.
enum Lookup {
    /// Keeps the enum inhabited-looking when no SQL backend is compiled in.
    #[allow(dead_code)]
    Never(std::convert::Infallible),
    #[cfg(feature = "sqlite")]
    Sqlite {
        conn: Arc<Mutex<rusqlite::Connection>>,
        query: Arc<str>,
    },
    #[cfg(feature = "postgres")]
    Postgres {
        pool: sqlx::PgPool,
        query: sqlx::SqlStr,
    },
    #[cfg(feature = "mysql")]
    Mysql {
        pool: sqlx::MySqlPool,
        query: Arc<str>,
    },
}

/// A configured recipient check.
pub struct RecipientCheck {
    lookup: Lookup,
    timeout: Duration,
    ttl: Duration,
    cache: Mutex<HashMap<String, (bool, Instant)>>,
}

impl RecipientCheck {
    /// Connects the check to the first store of the configured kind.
    pub async fn open(config: &Config) -> Result<Option<Self>, StoreError> {
        let Some(check) = &config.recipient_check else {
            return Ok(None);
        };
        let backend = config
            .store
            .iter()
            .map(|s| &s.backend)
            .find(|b| b.kind() == check.store)
            .ok_or_else(|| StoreError::permanent("check", "no store of that kind"))?;
        let lookup = Self::lookup(backend, check).await?;
        Ok(Some(Self {
            lookup,
            timeout: Duration::from_millis(check.timeout_ms),
            ttl: Duration::from_secs(check.cache_ttl_secs),
            cache: Mutex::new(HashMap::new()),
        }))
    }

    async fn lookup(backend: &Backend, check: &RecipientCheckConfig) -> Result<Lookup, StoreError> {
        let _ = check;
        match backend {
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(c) => {
                let conn = crate::store::sqlite::open_read_only(&c.path)
                    .map_err(|e| StoreError::permanent("check", e))?;
                conn.busy_timeout(Duration::from_millis(check.timeout_ms))
                    .map_err(|e| StoreError::permanent("check", e))?;
                // Fail at start, not at the first RCPT, if the query is wrong.
                conn.prepare(&check.query)
                    .map_err(|e| StoreError::permanent("check", format!("query: {e}")))?;
                Ok(Lookup::Sqlite {
                    conn: Arc::new(Mutex::new(conn)),
                    query: check.query.as_str().into(),
                })
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(c) => postgres_lookup(c, check).await,
            #[cfg(feature = "mysql")]
            Backend::Mysql(c) => {
                let timeout = Duration::from_millis(check.timeout_ms);
                let pool = crate::store::mysql::check_pool(&c.url, timeout)?;
                // Fail at start, not at the first RCPT, if the query is
                // wrong: the server prepares it and counts its parameters.
                let prepared = async {
                    let mut conn = pool.acquire().await?;
                    let st = sqlx::Executor::prepare(
                        &mut *conn,
                        sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(check.query.as_str())),
                    )
                    .await?;
                    Ok::<_, sqlx::Error>(match sqlx::Statement::parameters(&st) {
                        Some(sqlx::Either::Right(n)) => n,
                        Some(sqlx::Either::Left(types)) => types.len(),
                        None => 1,
                    })
                };
                let count = match tokio::time::timeout(timeout, prepared).await {
                    Ok(Ok(n)) => n,
                    Ok(Err(e @ sqlx::Error::Database(_))) => {
                        return Err(StoreError::permanent("check", format!("query: {e}")));
                    }
                    Ok(Err(e)) => return Err(StoreError::transient("check", e)),
                    Err(_) => return Err(StoreError::transient("check", "connect timed out")),
                };
                if count != 1 {
                    return Err(StoreError::permanent(
                        "check",
                        format!("query: needs exactly one ? (the address), has {count}"),
                    ));
                }
                Ok(Lookup::Mysql {
                    pool,
                    query: check.query.as_str().into(),
                })
            }
            #[allow(unreachable_patterns)]
            other => Err(StoreError::permanent(
                "check",
                format!("recipient check on {:?} is not compiled in", other.kind()),
            )),
        }
    }

    /// Looks `address` up (case-insensitively).
    pub async fn verify(&self, address: &str) -> RecipientVerdict {
        let key = address.to_lowercase();
        if let Some(known) = self.cached(&key) {
            return verdict(known);
        }
        let answer = match tokio::time::timeout(self.timeout, self.query(&key)).await {
            Ok(Ok(known)) => known,
            Ok(Err(e)) => {
                tracing::warn!(address = %key, error = %e, "recipient lookup failed");
                return RecipientVerdict::LookupFailed;
            }
            Err(_) => {
                tracing::warn!(address = %key, timeout_ms = self.timeout.as_millis() as u64, "recipient lookup timed out");
                return RecipientVerdict::LookupFailed;
            }
        };
        if !self.ttl.is_zero() {
            let mut cache = self.cache.lock().expect("cache lock");
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(key, (answer, Instant::now()));
        }
        verdict(answer)
    }

    fn cached(&self, key: &str) -> Option<bool> {
        let cache = self.cache.lock().expect("cache lock");
        cache
            .get(key)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(known, _)| *known)
    }

    /// True if the query returns a row.
    async fn query(&self, address: &str) -> Result<bool, String> {
        match &self.lookup {
            Lookup::Never(never) => match *never {},
            #[cfg(feature = "sqlite")]
            Lookup::Sqlite { conn, query } => {
                let (conn, query, address) = (conn.clone(), query.clone(), address.to_owned());
                tokio::task::spawn_blocking(move || {
                    let conn = conn
                        .lock()
                        .map_err(|_| "lookup connection poisoned".to_owned())?;
                    let mut st = conn.prepare_cached(&query).map_err(|e| e.to_string())?;
                    st.exists([address]).map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| e.to_string())?
            }
            #[cfg(feature = "postgres")]
            Lookup::Postgres { pool, query } => sqlx::query(query.clone())
                .bind(address)
                .fetch_optional(pool)
                .await
                .map(|row| row.is_some())
                .map_err(|e| e.to_string()),
            #[cfg(feature = "mysql")]
            Lookup::Mysql { pool, query } => {
                let row = sqlx::query(sqlx::AssertSqlSafe(Arc::clone(query)))
                    .bind(address)
                    .fetch_optional(pool)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(row.is_some())
            }
        }
    }
}

/// A pool of its own (the store's belongs to its writer) and the query,
/// checked now so a wrong one stops the start instead of answering every
/// RCPT `451`.
#[cfg(feature = "postgres")]
async fn postgres_lookup(
    cfg: &crate::config::PostgresConfig,
    check: &RecipientCheckConfig,
) -> Result<Lookup, StoreError> {
    use sqlx::{Connection as _, Either, Executor as _, SqlSafeStr as _, Statement as _, Type};
    // RCPTs of many connections look up at once; a few connections serve
    // them, and a lookup that waits longer than timeout_ms fails anyway.
    let pool =
        crate::store::postgres::connect_pool(cfg, 4, Duration::from_millis(check.timeout_ms))
            .await?;
    let query = sqlx::AssertSqlSafe(check.query.as_str()).into_sql_str();
    let bad = |why: String| StoreError::permanent("check", format!("query: {why}"));
    let failed = |e: sqlx::Error| bad(e.to_string());
    let mut conn = pool.acquire().await.map_err(failed)?;
    // A connection caches a statement by its text alone, whatever types it
    // was prepared with: the cache is emptied after each prepare, so the
    // second reaches the server and the lookups later prepare their own.
    // Untyped first, so PostgreSQL says how many parameters it sees...
    let st = (&mut *conn).prepare(query.clone()).await.map_err(failed)?;
    conn.clear_cached_statements().await.map_err(failed)?;
    let params = match st.parameters() {
        Some(Either::Left(types)) => types.len(),
        Some(Either::Right(n)) => n,
        None => 0,
    };
    if params != 1 {
        return Err(bad(format!(
            "needs exactly one parameter ($1, the address), has {params}"
        )));
    }
    // ...then with $1 as the text we bind, so a type mismatch shows now.
    let text = <&str as Type<sqlx::Postgres>>::type_info();
    (&mut *conn)
        .prepare_with(query.clone(), &[text])
        .await
        .map_err(failed)?;
    conn.clear_cached_statements().await.map_err(failed)?;
    drop(conn);
    Ok(Lookup::Postgres { pool, query })
}

fn verdict(known: bool) -> RecipientVerdict {
    if known {
        RecipientVerdict::Known
    } else {
        RecipientVerdict::Unknown
    }
}
