//! The database backend (`storage.backend = "database"`) on a PostgreSQL
//! database of each test's own: blobs of several chunks round trip, in
//! plaintext and encrypted; identical bytes are stored once, also when two
//! replicas commit them at once; a chunk edited or missing is caught on
//! read; rotation re-encrypts the rows and retires the old key; a lost
//! database is an outage, not damage.

use super::*;
use crate::Store;
use crate::store::WriterId;
use crate::store::tests::on_postgres;

/// More than three chunks, not a multiple of either the chunk or the
/// segment.
const SIZE: usize = 3 * DB_CHUNK_BYTES + 12_345;

fn data(seed: u8) -> Vec<u8> {
    (0..SIZE)
        .map(|i| ((i * 31 + usize::from(seed)) % 251) as u8)
        .collect()
}

async fn stores(url: &str, dir: &Path, keys: Option<EncryptionKeys>) -> Result<(Store, BlobStore)> {
    let db = Store::connect(url, WriterId::main()).await?;
    let blobs = BlobStore::open_in_database(dir, keys, &db).await?;
    Ok((db, blobs))
}

async fn scalar(db: &Store, sql: &str, sha: &str) -> Result<i64> {
    let row = db
        .connection()
        .query_one_raw(pg(sql, [sha.into()]))
        .await
        .or_db()?;
    match row {
        Some(r) => r.try_get::<i64>("", "n").or_db(),
        None => panic!("no row for {sql}"),
    }
}

async fn exec(db: &Store, sql: &str, sha: &str) -> Result<u64> {
    Ok(db
        .connection()
        .execute_raw(pg(sql, [sha.into()]))
        .await
        .or_db()?
        .rows_affected())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_of_several_chunks_round_trip_encrypted_or_not() -> Result<()> {
    on_postgres("blobs_round_trip", |url| async move {
        for encrypted in [false, true] {
            let dir = tempfile::tempdir()?;
            let k = encrypted.then(|| keys(&key_line("k1", 1)));
            let (db, store) = stores(&url, dir.path(), k).await?;
            assert!(store.in_database());
            let mut bytes = data(u8::from(encrypted));
            // Something to look for in the rows.
            bytes[DB_CHUNK_BYTES + 7..DB_CHUNK_BYTES + 31]
                .copy_from_slice(b"CONG VAN MAT 15/QD-UBND ");
            let hex = put(&store, &bytes, 100_000).await?;
            assert_eq!(get(&store, &hex, SIZE as u64, 10_000).await?, bytes);
            let empty = put(&store, b"", 1).await?;
            assert_eq!(get(&store, &empty, 0, 10).await?, b"");

            let chunks = scalar(
                &db,
                "SELECT count(*) AS n FROM stored_blob_chunks WHERE sha256 = $1",
                &hex,
            )
            .await?;
            let stored = scalar(
                &db,
                "SELECT sum(length(bytes))::bigint AS n FROM stored_blob_chunks WHERE sha256 = $1",
                &hex,
            )
            .await?;
            let expect = if encrypted {
                encrypted_len(8 + 3 + 2 + 8, SIZE as u64)
            } else {
                SIZE as u64
            };
            assert_eq!(stored as u64, expect, "encrypted={encrypted}");
            assert_eq!(chunks as u64, expect.div_ceil(DB_CHUNK_BYTES as u64));
            let leaks = scalar(
                &db,
                "SELECT count(*) AS n FROM stored_blob_chunks WHERE sha256 = $1 \
                 AND position('CONG VAN MAT'::bytea in bytes) > 0",
                &hex,
            )
            .await?;
            assert_eq!(leaks, i64::from(!encrypted), "encrypted={encrypted}");
            let key_id = db
                .connection()
                .query_one_raw(pg(
                    "SELECT key_id FROM stored_blobs WHERE sha256 = $1",
                    [hex.as_str().into()],
                ))
                .await
                .or_db()?
                .map(|r| r.try_get::<Option<String>>("", "key_id"))
                .transpose()
                .or_db()?;
            assert_eq!(key_id, Some(encrypted.then(|| "k1".to_owned())));

            // Nothing stays on the replica's disk but its empty tmp/.
            assert_eq!(std::fs::read_dir(dir.path().join("tmp"))?.count(), 0);
            assert!(!dir.path().join("blobs").exists());
            exec(&db, "DELETE FROM stored_blob_chunks WHERE $1 = $1", "").await?;
            exec(&db, "DELETE FROM stored_blobs WHERE $1 = $1", "").await?;
            exec(&db, "DELETE FROM storage_keychecks WHERE $1 = $1", "").await?;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_bytes_are_stored_once_also_from_two_replicas_at_once() -> Result<()> {
    on_postgres("blobs_dedupe", |url| async move {
        let (dir1, dir2) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let k = keys(&key_line("k1", 1));
        let (db, one) = stores(&url, dir1.path(), Some(k.clone())).await?;
        let (_db2, two) = stores(&url, dir2.path(), Some(k)).await?;
        let bytes = data(3);
        for expect_new in [true, false] {
            let mut w = one.create().await?;
            w.write(&bytes).await?;
            assert_eq!(one.commit(w.seal().await?).await?, expect_new);
        }
        // The same new bytes committed by both replicas at the same moment.
        let other = data(4);
        let mut sealed = Vec::new();
        for store in [&one, &two] {
            let mut w = store.create().await?;
            w.write(&other).await?;
            sealed.push(w.seal().await?);
        }
        let b = sealed.pop();
        let a = sealed.pop();
        let (Some(a), Some(b)) = (a, b) else {
            panic!("two sealed blobs")
        };
        let hex = hex::encode(a.sha256);
        let (ra, rb) = tokio::join!(one.commit(a), two.commit(b));
        assert!(ra? ^ rb?, "exactly one of the two stores the bytes");
        assert_eq!(
            scalar(
                &db,
                "SELECT count(*) AS n FROM stored_blobs WHERE $1 = $1",
                ""
            )
            .await?,
            2
        );
        let chunks = scalar(
            &db,
            "SELECT count(*) AS n FROM stored_blob_chunks WHERE sha256 = $1",
            &hex,
        )
        .await?;
        assert_eq!(chunks, 4);
        // Either replica reads what either stored.
        assert_eq!(get(&two, &hex, SIZE as u64, 65_536).await?, other);
        assert_eq!(std::fs::read_dir(dir1.path().join("tmp"))?.count(), 0);
        assert_eq!(std::fs::read_dir(dir2.path().join("tmp"))?.count(), 0);

        // Undoing a commit removes the rows; removing again is no error.
        one.remove(&hex).await?;
        one.remove(&hex).await?;
        let e = refusal(two.open_blob(&hex, SIZE as u64).await);
        assert_eq!(e.reason(), Reason::DigestMismatch);
        assert!(
            e.message().contains("missing from the gateway's database"),
            "{}",
            e.message()
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_or_missing_chunk_is_caught_on_read() -> Result<()> {
    on_postgres("blobs_damage", |url| async move {
        for encrypted in [false, true] {
            let dir = tempfile::tempdir()?;
            let k = encrypted.then(|| keys(&key_line("k1", 1)));
            let (db, store) = stores(&url, dir.path(), k).await?;
            let bytes = data(5 + u8::from(encrypted));
            let hex = put(&store, &bytes, 65_536).await?;

            let flip = "UPDATE stored_blob_chunks \
                        SET bytes = set_byte(bytes, 1000, get_byte(bytes, 1000) # 1) \
                        WHERE sha256 = $1 AND n = 1";
            assert_eq!(exec(&db, flip, &hex).await?, 1);
            let e = read_err(&store, &hex, SIZE as u64).await;
            assert_eq!(
                e.reason(),
                Reason::DigestMismatch,
                "encrypted={encrypted}: {e}"
            );
            if encrypted {
                assert!(
                    e.message().contains("altered in the database"),
                    "{}",
                    e.message()
                );
            }
            // Flipped back, it reads again.
            exec(&db, flip, &hex).await?;
            assert_eq!(get(&store, &hex, SIZE as u64, 100_000).await?, bytes);

            assert_eq!(
                exec(
                    &db,
                    "DELETE FROM stored_blob_chunks WHERE sha256 = $1 AND n = 2",
                    &hex
                )
                .await?,
                1
            );
            let e = read_err(&store, &hex, SIZE as u64).await;
            assert_eq!(
                e.reason(),
                Reason::DigestMismatch,
                "encrypted={encrypted}: {e}"
            );
            assert!(
                e.message()
                    .contains("part 3 of 4 of the stored attachment is missing"),
                "{}",
                e.message()
            );
            // A row that says the blob is shorter than it was accepted.
            exec(
                &db,
                "UPDATE stored_blobs SET stored_size = stored_size - 1 WHERE sha256 = $1",
                &hex,
            )
            .await?;
            let e = read_err(&store, &hex, SIZE as u64).await;
            assert_eq!(
                e.reason(),
                Reason::DigestMismatch,
                "encrypted={encrypted}: {e}"
            );
            store.remove(&hex).await?;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_re_encrypts_the_rows_and_retires_the_old_key() -> Result<()> {
    on_postgres("blobs_rotation", |url| async move {
        let dir = tempfile::tempdir()?;
        let k1 = key_line("k1", 1);
        let k2 = key_line("k2", 2);
        // Written before encryption was turned on, then under k1.
        let (_db0, plain) = stores(&url, dir.path(), None).await?;
        let before = put(&plain, b"written before encryption", 5).await?;
        let (_db1, store) = stores(&url, dir.path(), Some(keys(&k1))).await?;
        let big = data(7);
        let a = put(&store, &big, 100_000).await?;
        let b = put(&store, b"second", 2).await?;
        let bad = put(&store, b"bytes to be damaged", 4).await?;
        // A store without keys no longer opens: the rows need k1.
        let e = refusal(stores(&url, dir.path(), None).await);
        assert!(
            e.message()
                .contains("in the database holds attachments encrypted with key k1"),
            "{}",
            e.message()
        );

        let both = keys(&format!("{k2}\n{k1}\n"));
        let (db, store) = stores(&url, dir.path(), Some(both.clone())).await?;
        // A reader opened before the rotation.
        let mut early = store.open_blob(&a, SIZE as u64).await?;
        let first = early.next_chunk(1000).await?;
        assert_eq!(first.as_deref(), Some(&big[..1000]));

        // One damaged blob: rotation leaves it, and keeps k1.
        exec(
            &db,
            "UPDATE stored_blob_chunks SET bytes = set_byte(bytes, length(bytes) - 1, \
             get_byte(bytes, length(bytes) - 1) # 128) WHERE sha256 = $1",
            &bad,
        )
        .await?;
        let report = store.rotate_key().await?;
        assert_eq!(report.current_key, "k2");
        assert_eq!(report.reencrypted, 2, "{report:?}");
        assert_eq!(report.encrypted, 1, "{report:?}");
        assert_eq!(report.damaged, std::slice::from_ref(&bad), "{report:?}");
        assert!(report.retired_keys.is_empty(), "{report:?}");

        // The early reader does not hand out a mix of the two forms.
        let e = loop {
            match early.next_chunk(65_536).await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("a read across a rotation passed"),
                Err(e) => break e,
            }
        };
        assert_eq!(e.reason(), Reason::Unavailable, "{e}");
        assert!(e.message().contains("re-encrypted"), "{}", e.message());

        store.remove(&bad).await?;
        let report = store.rotate_key().await?;
        assert_eq!(report.already_current, 3, "{report:?}");
        assert_eq!(report.reencrypted + report.encrypted, 0, "{report:?}");
        assert_eq!(report.retired_keys, ["k1"], "{report:?}");

        // k1 may now leave the key file; the bytes read back under k2.
        let (_db3, store) = stores(&url, dir.path(), Some(keys(&k2))).await?;
        assert_eq!(get(&store, &a, SIZE as u64, 65_536).await?, big);
        assert_eq!(get(&store, &b, 6, 100).await?, b"second");
        assert_eq!(
            get(&store, &before, 25, 10).await?,
            b"written before encryption"
        );
        // A mistyped k2 is refused at open, naming the row.
        let e = refusal(stores(&url, dir.path(), Some(keys(&key_line("k2", 9)))).await);
        assert!(
            e.message().contains("is not the key") && e.message().contains("storage_keychecks"),
            "{}",
            e.message()
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_is_an_outage_not_damage() -> Result<()> {
    on_postgres("blobs_outage", |url| async move {
        let dir = tempfile::tempdir()?;
        let (db, store) = stores(&url, dir.path(), None).await?;
        let bytes = data(8);
        let hex = put(&store, &bytes, 100_000).await?;
        let mut r = store.open_blob(&hex, SIZE as u64).await?;
        assert!(r.next_chunk(1000).await?.is_some());
        db.connection().clone().close().await.or_db()?;
        let e = read_err(&store, &hex, SIZE as u64).await;
        assert_eq!(e.reason(), Reason::Unavailable, "{e}");
        let e = loop {
            match r.next_chunk(65_536).await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("read past a closed database"),
                Err(e) => break e,
            }
        };
        assert_eq!(e.reason(), Reason::Unavailable, "{e}");
        let mut w = store.create().await?;
        w.write(b"after").await?;
        let e = refusal(store.commit(w.seal().await?).await);
        assert_eq!(e.reason(), Reason::Unavailable, "{e}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn the_database_backend_is_refused_on_sqlite() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("lt.db").display());
    let db = Store::connect(&url, WriterId::main()).await?;
    let e = refusal(BlobStore::open_in_database(dir.path().join("blobs"), None, &db).await);
    assert_eq!(e.reason(), Reason::Malformed);
    assert!(
        e.message().contains("storage.backend = \"database\"") && e.message().contains("SQLite"),
        "{}",
        e.message()
    );
    Ok(())
}
