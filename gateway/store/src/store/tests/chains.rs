//! The transfer log's chains: several writers on one database, each chain
//! verified on its own and a break named with its chain; and a database of
//! the release before chains had names, migrated under that release's feet.

use super::*;
use lienthong_schema::migration::GENESIS;

const SECOND: &str = "gw-2";

fn second() -> WriterId {
    WriterId::new(SECOND).expect("a well-formed writer id")
}

fn line(detail: &str) -> NewEvent {
    NewEvent {
        kind: EventKind::DirectoryChanged,
        sender: "A".into(),
        message_id: String::new(),
        recipient: None,
        reason: None,
        detail: detail.into(),
        actor: Some("cli:test".into()),
        transport: "cli".into(),
    }
}

#[test]
fn writer_ids_are_checked_and_each_chain_starts_from_its_name() {
    for good in ["gw-2", "lienthong-0", "h35.replica_1", &"x".repeat(63)] {
        assert_eq!(
            WriterId::new(good).map(|w| w.to_string()).ok(),
            Some(good.to_owned())
        );
    }
    for bad in [
        "",
        "-gw",
        ".gw",
        "gw 2",
        "gw/2",
        "bản-sao",
        "gw\n2",
        &"x".repeat(64),
    ] {
        let e = WriterId::new(bad).expect_err(bad);
        assert_eq!(e.reason(), Reason::Malformed);
        assert!(e.message().contains("chain of the transfer log"), "{e}");
    }
    assert_eq!(WriterId::main().as_str(), MAIN_CHAIN);
    assert_eq!(
        WriterId::main().genesis(),
        GENESIS,
        "main keeps the one chain's genesis"
    );
    assert_ne!(second().genesis(), GENESIS);
    assert_ne!(chain_genesis("gw-2"), chain_genesis("gw-3"));
}

/// Two writers (two stores, as two replicas) on one database appending at
/// once: acceptances through each one's committer, single lines and
/// acknowledgements beside them. Both chains verify, whichever store
/// verifies; then the second chain is cut, holed and edited, and each break
/// is named with its chain while the first stays intact.
async fn two_writers(a: &Store, b: &Store) -> Result<()> {
    let mut tasks = Vec::new();
    for i in 0..40 {
        for (s, tag) in [(a, "a"), (b, "b")] {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("{tag}{i}");
                s.accept(new_message("A", &id, &["B"])).await?;
                if i % 4 == 0 {
                    s.log(line(&format!("line of {id}"))).await?;
                }
                Ok::<_, Error>(())
            }));
        }
    }
    for t in tasks {
        t.await.expect("task")?;
    }
    let inbox = a.pending("B", 0, None, 1000).await?;
    assert_eq!(inbox.len(), 80);
    let mut acks = Vec::new();
    for (i, p) in inbox.into_iter().enumerate() {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        acks.push(tokio::spawn(async move {
            s.ack("B", &p.delivery.delivery_id, "test").await
        }));
    }
    for t in acks {
        assert_eq!(t.await.expect("task")?, Some(AckOutcome::Acknowledged));
    }

    // Per writer: 40 acceptances of two lines, 10 lines, 40 acknowledgements.
    const EACH: u64 = 40 * 2 + 10 + 40;
    for s in [a, b] {
        let v = s.verify_log().await?;
        assert!(v.intact(), "{v:?}");
        let names: Vec<&str> = v.chains.iter().map(|c| c.chain.as_str()).collect();
        assert_eq!(names, [SECOND, MAIN_CHAIN]);
        for c in &v.chains {
            assert_eq!(c.checked, EACH, "{c:?}");
            assert_eq!(c.head.as_ref().map(|h| h.0), Some(EACH as i64), "{c:?}");
        }
        assert_eq!(v.checked(), 2 * EACH);
    }

    // Each break is found before the one made before it: its tail cut, an
    // event taken out of its middle, an event edited.
    let breaks = [
        (
            format!("DELETE FROM events WHERE chain = '{SECOND}' AND chain_seq = {EACH}"),
            EACH as i64,
            "removed from the end",
        ),
        (
            format!("DELETE FROM events WHERE chain = '{SECOND}' AND chain_seq = 60"),
            60,
            "missing",
        ),
        (
            format!(
                "UPDATE events SET detail = 'nothing to see' WHERE chain = '{SECOND}' AND chain_seq = 7"
            ),
            7,
            "changed",
        ),
    ];
    let mut v = a.verify_log().await?;
    for (sql, at, words) in breaks {
        a.execute_sql(&sql).await?;
        v = a.verify_log().await?;
        let main = v.chain(MAIN_CHAIN).expect("main is listed");
        assert_eq!((main.checked, &main.first_broken), (EACH, &None), "{v:?}");
        let (chain, seq, what) = v.first_broken().expect("the break is found");
        assert_eq!((chain, seq), (SECOND, at), "{v:?}");
        assert!(what.contains(words), "{what}");
    }
    assert_eq!(v.chain(SECOND).map(|c| c.checked), Some(6));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_extend_a_chain_each() -> Result<()> {
    let (dir, a) = store().await?;
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let b = Store::connect(&url, second()).await?;
    two_writers(&a, &b).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_extend_a_chain_each_on_postgres() -> Result<()> {
    on_postgres("two_writers", |url| async move {
        let a = Store::connect(&url, WriterId::main()).await?;
        let b = Store::connect(&url, second()).await?;
        let r = two_writers(&a, &b).await;
        a.db.clone().close().await.ok();
        b.db.clone().close().await.ok();
        r
    })
    .await
}

/// A chain is its head row and its events together, under its own name.
#[tokio::test]
async fn a_chain_relabelled_or_without_its_row_or_its_events_is_found() -> Result<()> {
    let (dir, a) = store().await?;
    let v = a.verify_log().await?;
    assert!(
        v.intact(),
        "a new database's main stands at its genesis: {v:?}"
    );
    assert_eq!(v.chains.len(), 1, "{v:?}");
    assert_eq!(v.chains[0].head, Some((0, GENESIS.to_owned())));

    let url = format!("sqlite://{}/t.db", dir.path().display());
    let b = Store::connect(&url, second()).await?;
    assert_eq!(b.writer(), &second());
    for i in 0..3 {
        a.log(line(&format!("main {i}"))).await?;
        b.log(line(&format!("second {i}"))).await?;
    }
    assert!(a.verify_log().await?.intact());
    let broken = async |sql: &str| -> Result<(String, i64, String)> {
        a.execute_sql(sql).await?;
        let v = a.verify_log().await?;
        assert!(
            v.chain(MAIN_CHAIN)
                .is_some_and(|c| c.first_broken.is_none())
        );
        let (chain, seq, what) = v.first_broken().expect("a break");
        Ok((chain.to_owned(), seq, what.to_owned()))
    };

    // Relabelled whole, row and events: its first link names its own chain.
    let (chain, seq, what) = broken(&format!(
        "UPDATE events SET chain = 'gw-3' WHERE chain = '{SECOND}'; \
         UPDATE log_head SET chain = 'gw-3' WHERE chain = '{SECOND}'"
    ))
    .await?;
    assert_eq!((chain.as_str(), seq), ("gw-3", 1));
    assert!(what.contains("does not start this chain"), "{what}");
    a.execute_sql(&format!(
        "UPDATE events SET chain = '{SECOND}' WHERE chain = 'gw-3'; \
         UPDATE log_head SET chain = '{SECOND}' WHERE chain = 'gw-3'"
    ))
    .await?;
    assert!(a.verify_log().await?.intact());

    // Its row removed: found, and its writer appends no more.
    let (chain, seq, what) =
        broken(&format!("DELETE FROM log_head WHERE chain = '{SECOND}'")).await?;
    assert_eq!((chain.as_str(), seq), (SECOND, 0));
    assert!(what.contains("no head row"), "{what}");
    let refused = b.log(line("after the row went")).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| format!("{e:#}").contains("no head row")),
        "{refused:?}"
    );
    a.execute_sql(&format!(
        "INSERT INTO log_head (chain, seq, hash) \
         SELECT chain, chain_seq, hash FROM events WHERE chain = '{SECOND}' AND chain_seq = 3"
    ))
    .await?;
    assert!(a.verify_log().await?.intact());

    // Its events removed, the row left.
    let (chain, seq, what) =
        broken(&format!("DELETE FROM events WHERE chain = '{SECOND}'")).await?;
    assert_eq!((chain.as_str(), seq), (SECOND, 1));
    assert!(what.contains("no events"), "{what}");
    // ... and the row set back to its genesis too: still no chain's row
    // stands without its events (but a new database's main).
    let (chain, seq, what) = broken(&format!(
        "UPDATE log_head SET seq = 0, hash = '{}' WHERE chain = '{SECOND}'",
        second().genesis()
    ))
    .await?;
    assert_eq!((chain.as_str(), seq), (SECOND, 0));
    assert!(what.contains("no events"), "{what}");
    Ok(())
}

/// The appends of the release before chains had names, statement for
/// statement: the head row known as `id = 1`, events inserted without a
/// chain, and its `log verify`'s read of the head.
mod previous {
    use super::*;
    use sea_orm::Value;

    fn statement(backend: DbBackend, sql: &str, values: Vec<Value>) -> Statement {
        let mut text = String::with_capacity(sql.len());
        let mut n = 0;
        for c in sql.chars() {
            match (c, backend) {
                ('?', DbBackend::Postgres) => {
                    n += 1;
                    text.push_str(&format!("${n}"));
                }
                _ => text.push(c),
            }
        }
        Statement::from_sql_and_values(backend, text, values)
    }

    /// Appends `events` as that release did, from the head it knew if any
    /// (its compare-and-set), else from the row it locked; returns the new
    /// head.
    pub(super) async fn append(
        db: &DatabaseConnection,
        known: Option<&(i64, String)>,
        events: &[NewEvent],
    ) -> Result<(i64, String)> {
        let backend = db.get_database_backend();
        let at = now_micros();
        let n = events.len() as i64;
        let links = |start: &(i64, String)| {
            let mut prev = start.1.clone();
            let mut out = Vec::new();
            for (i, e) in events.iter().enumerate() {
                let seq = start.0 + 1 + i as i64;
                let hash = e.chain_hash(&prev, seq, at);
                out.push((seq, prev, hash.clone()));
                prev = hash;
            }
            out
        };
        let txn = db.begin().await.or_db()?;
        let mut set = None;
        if let Some(start) = known {
            let rows = links(start);
            let end = rows.last().map(|r| (r.0, r.2.clone())).expect("events");
            let moved = txn
                .execute_raw(statement(
                    backend,
                    "UPDATE log_head SET seq = ?, hash = ? WHERE id = 1 AND seq = ? AND hash = ?",
                    vec![
                        end.0.into(),
                        end.1.into(),
                        start.0.into(),
                        start.1.clone().into(),
                    ],
                ))
                .await
                .or_db()?
                .rows_affected();
            if moved == 1 {
                set = Some(rows);
            }
        }
        let locked = set.is_none();
        let rows = match set {
            Some(rows) => rows,
            None => {
                let row = txn
                    .query_one_raw(statement(
                        backend,
                        "UPDATE log_head SET seq = seq + ? WHERE id = 1 RETURNING seq, hash",
                        vec![n.into()],
                    ))
                    .await
                    .or_db()?
                    .expect("main's row keeps id 1");
                let seq: i64 = row.try_get("", "seq").or_db()?;
                links(&(seq - n, row.try_get("", "hash").or_db()?))
            }
        };
        for (e, (seq, prev, hash)) in events.iter().zip(&rows) {
            txn.execute_raw(statement(
                backend,
                "INSERT INTO events (at, kind, sender, message_id, recipient, reason, detail, \
                 actor, transport, chain_seq, prev_hash, hash) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                vec![
                    at.into(),
                    e.kind.as_str().into(),
                    e.sender.clone().into(),
                    e.message_id.clone().into(),
                    e.recipient.clone().into(),
                    e.reason.clone().into(),
                    e.detail.clone().into(),
                    e.actor.clone().into(),
                    e.transport.clone().into(),
                    (*seq).into(),
                    prev.clone().into(),
                    hash.clone().into(),
                ],
            ))
            .await
            .or_db()?;
        }
        let end = rows.last().map(|r| (r.0, r.2.clone())).expect("events");
        if locked {
            txn.execute_raw(statement(
                backend,
                "UPDATE log_head SET hash = ? WHERE id = 1",
                vec![end.1.clone().into()],
            ))
            .await
            .or_db()?;
        }
        let head = txn
            .query_one_raw(statement(
                backend,
                "SELECT id, seq, hash FROM log_head WHERE id = 1",
                vec![],
            ))
            .await
            .or_db()?
            .expect("main's row keeps id 1");
        assert_eq!(head.try_get::<i64>("", "seq").or_db()?, end.0);
        assert_eq!(head.try_get::<String>("", "hash").or_db()?, end.1);
        txn.commit().await.or_db()?;
        Ok(end)
    }
}

/// A database the release before chains had names made and wrote to,
/// migrated: its log verifies unchanged as the chain `main`; that release,
/// still running, appends to `main` with its own statements (expand first);
/// and it, this release's `main` and a replica extend the log together.
async fn migrated_under_the_previous_release(url: &str) -> Result<()> {
    let db = sea_orm::Database::connect(url).await.or_db()?;
    let index = |suffix: &str| {
        Migrator::migrations()
            .iter()
            .position(|m| m.name().ends_with(suffix))
            .map(|i| i as u32)
            .unwrap_or_else(|| panic!("no migration {suffix}"))
    };
    let chain = index("_log_chain");
    let chains = index("_log_chains");
    // Up to the migration that started the chain, and then to the last one
    // before chains had names: both with events in the log.
    Migrator::up(&db, Some(chain + 1)).await.or_db()?;
    let lines = |tag: &str, n: usize| -> Vec<NewEvent> {
        (0..n).map(|i| line(&format!("{tag} {i}"))).collect()
    };
    let head = previous::append(&db, None, &lines("first", 3)).await?;
    Migrator::up(&db, Some(chains - chain - 1)).await.or_db()?;
    let head = previous::append(&db, Some(&head), &lines("second", 2)).await?;

    Migrator::up(&db, None).await.or_db()?;
    let main = Store {
        db: db.clone(),
        committer: None,
        directory: Arc::default(),
        writer: WriterId::main(),
    };
    let v = main.verify_log().await?;
    assert!(v.intact(), "{v:?}");
    assert_eq!(v.chains.len(), 1, "{v:?}");
    assert_eq!(v.chains[0].chain, MAIN_CHAIN);
    assert_eq!(
        (v.chains[0].checked, v.chains[0].head.clone()),
        (5, Some(head.clone()))
    );

    // The release before, still running: its compare-and-set and its
    // locked append both land in main.
    let head = previous::append(&db, Some(&head), &lines("old cas", 2)).await?;
    previous::append(&db, None, &lines("old lock", 1)).await?;
    // This release as main and as a replica; then the release before again
    // from the head it last knew, which moved meanwhile.
    main.accept(new_message("A", "after", &["B"])).await?;
    let replica = Store {
        writer: second(),
        ..main.clone()
    };
    replica.log(line("replica 0")).await?;
    replica.accept(new_message("A", "replica", &["B"])).await?;
    previous::append(&db, Some(&head), &lines("old again", 2)).await?;
    main.log(line("new again")).await?;

    let v = main.verify_log().await?;
    assert!(v.intact(), "{v:?}");
    let main_chain = v.chain(MAIN_CHAIN).expect("main");
    assert_eq!(main_chain.checked, 5 + 2 + 1 + 2 + 2 + 1, "{v:?}");
    assert_eq!(v.chain(SECOND).map(|c| c.checked), Some(3), "{v:?}");
    let unnamed: i64 = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM events WHERE chain <> 'main'",
        ))
        .await
        .or_db()?
        .expect("a count")
        .try_get("", "n")
        .or_db()?;
    assert_eq!(unnamed, 3, "only the replica's lines are outside main");
    Ok(())
}

#[tokio::test]
async fn a_log_of_the_previous_release_verifies_after_the_migration() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}/m.db?mode=rwc", dir.path().display());
    migrated_under_the_previous_release(&url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_the_previous_release_verifies_after_the_migration_on_postgres() -> Result<()> {
    on_postgres("log_chains_migration", |url| async move {
        migrated_under_the_previous_release(&url).await
    })
    .await
}
