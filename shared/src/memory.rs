//! The process's heap between large steps. The allocator (glibc) keeps freed memory of its
//! arenas for later use: after a step that held hundreds of MB in buffers of a few MB (a
//! layer's patch trials, an initrd's repack trial), that memory stays resident while the next
//! large step allocates its own, and the peak RSS is their sum. [`release_free_heap`] hands the
//! free pages back between such steps so the peak is the largest step's, not the sum (measured
//! on the kernel ABI pair's FORMAT 3 build: see NOTES.md). Bytes written never depend on it.

/// Returns the heap's free pages to the kernel (glibc's `malloc_trim`); a no-op elsewhere.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
