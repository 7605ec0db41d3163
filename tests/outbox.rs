//! The mirror outbox: rows written in the same transaction as the local
//! write, latest write per key only, removed only when acknowledged, and
//! kept across restarts.

use embercache::{Cache, Durability, EPOCH_NAMESPACE, OutboxKind, record};

fn open(dir: &std::path::Path) -> Cache {
    Cache::builder()
        .dir(dir)
        .durability(Durability::Sync)
        .outbox(true)
        .open()
        .unwrap()
}

#[test]
fn outbox_keeps_latest_write_per_key_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    c.set("price", b"BTC", b"1".to_vec()).unwrap();
    c.set("price", b"ETH", b"2".to_vec()).unwrap();
    c.set("price", b"BTC", b"3".to_vec()).unwrap(); // coalesces the first row
    c.delete("price", b"ETH").unwrap(); // replaces the ETH put
    c.invalidate_namespace("search").unwrap();
    let rows = c.outbox_peek(100).unwrap();
    let view: Vec<(&str, &[u8], OutboxKind)> = rows
        .iter()
        .map(|r| (r.namespace.as_str(), r.key.as_slice(), r.kind))
        .collect();
    assert_eq!(
        view,
        vec![
            ("price", &b"BTC"[..], OutboxKind::Put),
            ("price", &b"ETH"[..], OutboxKind::Delete),
            (EPOCH_NAMESPACE, &b"search"[..], OutboxKind::Epoch),
        ]
    );
    // The Put carries the verified record of the newest value.
    let (h, v) = record::decode(&rows[0].record, 1 << 20, &|_| None).unwrap();
    assert_eq!((v.as_slice(), h.version), (&b"3"[..], rows[0].version));
    assert_eq!(rows[2].version, 1, "epoch rows carry the new epoch");
    let s = c.stats();
    assert_eq!((s.outbox_rows, s.outbox_coalesced), (3, 2));

    // A write after the peek replaces a row: acking the old one keeps it.
    c.set("price", b"BTC", b"4".to_vec()).unwrap();
    c.outbox_ack(&rows).unwrap();
    let left = c.outbox_peek(100).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].key, b"BTC");
    c.close().unwrap();

    // Rows survive a restart until acknowledged.
    let c = open(dir.path());
    let again = c.outbox_peek(100).unwrap();
    assert_eq!(again, left);
    assert_eq!(c.stats().outbox_rows, 1);
    c.outbox_ack(&again).unwrap();
    assert!(c.outbox_peek(100).unwrap().is_empty());
    assert_eq!(c.stats().outbox_rows, 0);
    // A stale acknowledgement never removes a newer write of the key.
    c.set("price", b"BTC", b"5".to_vec()).unwrap();
    c.outbox_ack(&again).unwrap();
    assert_eq!(c.outbox_peek(10).unwrap().len(), 1);
}

#[test]
fn no_outbox_rows_when_the_mirror_is_off() {
    let c = Cache::builder().open().unwrap();
    c.set("ns", b"k", b"v".to_vec()).unwrap();
    c.flush().unwrap();
    assert!(c.outbox_peek(10).unwrap().is_empty());
}

#[test]
fn a_schema_version_bump_at_open_reaches_the_outbox() {
    use embercache::NamespacePolicy;
    let dir = tempfile::tempdir().unwrap();
    let open = |v: &str| {
        Cache::builder()
            .dir(dir.path())
            .outbox(true)
            .namespace("search", NamespacePolicy::default().schema_version(v))
            .open()
            .unwrap()
    };
    let c = open("v1");
    c.flush().unwrap();
    assert!(c.outbox_peek(10).unwrap().is_empty());
    c.close().unwrap();
    let c = open("v2");
    c.flush().unwrap();
    let rows = c.outbox_peek(10).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (
            rows[0].namespace.as_str(),
            rows[0].key.as_slice(),
            rows[0].kind
        ),
        (EPOCH_NAMESPACE, &b"search"[..], OutboxKind::Epoch)
    );
    assert_eq!(rows[0].version, 1);
}
