//! The attachment store (`lienthong-store`), and how the PDF signature
//! check reads and unpacks through it: the store knows nothing of PDFs.

pub use lienthong_store::blobs::*;

use crate::pades::ScratchFile;
use crate::pades::pdf::Source;

/// A PDF unpacked from a ZIP archive goes to a temporary file of the store,
/// never to memory.
#[derive(Debug, Clone, Copy)]
pub struct BlobScratch<'a>(pub &'a BlobStore);

impl crate::pades::Scratch for BlobScratch<'_> {
    fn create(&self) -> std::io::Result<Box<dyn ScratchFile + '_>> {
        self.0
            .temp_file()
            .map(|w| Box::new(ScratchTemp { store: self.0, w }) as Box<dyn ScratchFile>)
            .map_err(|e| std::io::Error::other(e.message().to_owned()))
    }
}

struct ScratchTemp<'a> {
    store: &'a BlobStore,
    w: TempWriter,
}

impl std::io::Write for ScratchTemp<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.w.write(data)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

impl ScratchFile for ScratchTemp<'_> {
    fn into_source(self: Box<Self>) -> std::io::Result<Box<dyn Source>> {
        let me = *self;
        let sealed =
            me.w.finish()
                .map_err(|e| std::io::Error::other(e.message().to_owned()))?;
        // Opened before the guard goes: the name is removed with `sealed`,
        // the open file stays readable until the source is dropped.
        me.store
            .source_of(&sealed)
            .map(|s| Box::new(BlobPdf(s)) as Box<dyn Source>)
            .map_err(|e| std::io::Error::other(e.message().to_owned()))
    }
}

/// A sealed blob as the PDF reader reads it: at any offset, one segment
/// decrypted at a time.
#[derive(Debug)]
pub struct BlobPdf(pub BlobSource);

impl Source for BlobPdf {
    fn len(&self) -> u64 {
        self.0.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read_at(offset, buf)
    }
}
