//! The tables of the metadata store and its write transactions, which record what they change.
//!
//! A [`Table`] is an LMDB database with a stable one-byte id. Reads go to LMDB directly (a
//! `Table` dereferences to its database); writes go through [`Table::put`], [`Table::delete`]
//! and [`Table::clear`], which take a [`Wtx`]: with a journal (the store on an object store,
//! see [`super::journal`]) the transaction keeps every change to a logged table, and its
//! [`Wtx::commit`] ships them to the bucket before the LMDB commit. Without one nothing is
//! kept and a commit is LMDB's.

use std::ops::{Deref, DerefMut};

use heed::types::Bytes;
use heed::{Database, RwTxn};

use super::journal::{Journal, Op};
use crate::error::Result;

pub(super) type Db = Database<Bytes, Bytes>;

/// One named database.
#[derive(Clone, Copy)]
pub(super) struct Table {
    db: Db,
    /// Its id in journal entries (stable across versions; see `journal`).
    pub(super) id: u8,
    /// Whether its changes are journaled: false for the legacy feature table (emptied by an
    /// upgrade, never written since).
    logged: bool,
}

impl Deref for Table {
    type Target = Db;
    fn deref(&self) -> &Db {
        &self.db
    }
}

impl Table {
    pub(super) fn new(db: Db, id: u8, logged: bool) -> Table {
        Table { db, id, logged }
    }

    fn log(&self, w: &mut Wtx<'_>, op: impl FnOnce() -> Op) {
        if self.logged {
            if let Some(ops) = &mut w.ops {
                ops.push(op());
            }
        }
    }

    pub(super) fn put(&self, w: &mut Wtx<'_>, key: &[u8], value: &[u8]) -> heed::Result<()> {
        self.db.put(&mut w.txn, key, value)?;
        self.log(w, || Op::Put {
            table: self.id,
            key: key.to_vec(),
            value: value.to_vec(),
        });
        Ok(())
    }

    pub(super) fn delete(&self, w: &mut Wtx<'_>, key: &[u8]) -> heed::Result<bool> {
        let found = self.db.delete(&mut w.txn, key)?;
        if found {
            self.log(w, || Op::Delete {
                table: self.id,
                key: key.to_vec(),
            });
        }
        Ok(found)
    }

    pub(super) fn clear(&self, w: &mut Wtx<'_>) -> heed::Result<()> {
        self.db.clear(&mut w.txn)?;
        self.log(w, || Op::Clear { table: self.id });
        Ok(())
    }
}

/// A write transaction of the metadata store.
pub struct Wtx<'e> {
    txn: RwTxn<'e>,
    /// The changes to logged tables, with a journal.
    ops: Option<Vec<Op>>,
    journal: Option<&'e Journal>,
    /// Shipped with the next durable commit rather than by this one (see [`super::Meta::write_lazy`]).
    lazy: bool,
}

impl<'e> Deref for Wtx<'e> {
    type Target = RwTxn<'e>;
    fn deref(&self) -> &RwTxn<'e> {
        &self.txn
    }
}

impl<'e> DerefMut for Wtx<'e> {
    fn deref_mut(&mut self) -> &mut RwTxn<'e> {
        &mut self.txn
    }
}

impl<'e> Wtx<'e> {
    pub(super) fn new(txn: RwTxn<'e>, journal: Option<&'e Journal>, lazy: bool) -> Wtx<'e> {
        Wtx {
            txn,
            ops: journal.map(|_| Vec::new()),
            journal,
            lazy,
        }
    }

    /// Drops the changes.
    pub fn abort(self) {
        self.txn.abort();
    }

    /// Commits: with a journal, the changes reach the bucket first (an error there aborts the
    /// transaction, and nothing of it is acknowledged).
    pub fn commit(self) -> Result<()> {
        match (self.journal, self.ops) {
            (Some(j), Some(ops)) => j.commit(self.txn, ops, self.lazy),
            _ => Ok(self.txn.commit()?),
        }
    }
}
