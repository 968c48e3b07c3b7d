//! A one-file backup source: the spooled output of a `command` service.
//!
//! The command's stdout is first written to a private file and the command's exit status
//! checked; only a command that succeeded is archived. (rustic_core's own child-stdout source
//! saves the snapshot before it learns the exit status, which would record a snapshot of a
//! failed `kubectl get`.)

use std::fs::File;
use std::iter::{once, Once};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustic_core::repofile::{Metadata, Node, NodeType};
use rustic_core::{ErrorKind, ReadSource, ReadSourceEntry, RusticError, RusticResult};

use crate::error::{Error, Kind, Result};

#[derive(Debug)]
pub struct SpoolSource {
    name: PathBuf,
    size: u64,
    file: Mutex<Option<File>>,
}

impl SpoolSource {
    pub fn new(file: &Path, name: PathBuf) -> Result<Self> {
        let f = File::open(file).map_err(|e| {
            Error::new(
                Kind::Io,
                format!("cannot read spool file {}: {e}", file.display()),
            )
        })?;
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            name,
            size,
            file: Mutex::new(Some(f)),
        })
    }
}

impl ReadSource for SpoolSource {
    type Open = File;
    type Iter = Once<RusticResult<ReadSourceEntry<File>>>;

    fn size(&self) -> RusticResult<Option<u64>> {
        Ok(Some(self.size))
    }

    fn entries(&self) -> Self::Iter {
        let open = self.file.lock().expect("spool lock").take();
        let Some(name) = self.name.file_name() else {
            return once(Err(RusticError::new(
                ErrorKind::InvalidInput,
                "the command output needs a file name",
            )));
        };
        let meta = Metadata {
            mode: Some(0o100_600),
            mtime: Some(jiff::Timestamp::now()),
            size: self.size,
            ..Default::default()
        };
        let node = Node::new_node(name, NodeType::File, meta);
        once(Ok(ReadSourceEntry {
            path: self.name.clone(),
            node,
            open,
        }))
    }
}
