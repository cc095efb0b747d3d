//! Random bytes from the operating system, fetched in batches.
//!
//! Every encrypted reply needs 24 random bytes (its 16-byte prefix and its nonce). Asking the
//! OS for them one reply at a time is a `getrandom` system call per message; this keeps a small
//! per-thread batch of the OS's bytes instead and hands each one out once, zeroing it as it
//! goes. The bytes are the OS generator's own: nothing here stretches or derives them.

use std::cell::RefCell;

/// Bytes fetched at once: one system call for ~21 encrypted replies.
pub const BATCH: usize = 512;

struct Batch {
    bytes: [u8; BATCH],
    /// Bytes already handed out (and zeroed) from the front of `bytes`.
    used: usize,
}

thread_local! {
    static BATCH_OF_THIS_THREAD: RefCell<Batch> = const {
        RefCell::new(Batch { bytes: [0; BATCH], used: BATCH })
    };
}

/// Fills `out` with random bytes from the OS, from this thread's batch when it has enough left
/// (a request larger than [`BATCH`] goes to the OS directly). Fails only if the OS generator
/// fails.
pub fn fill(out: &mut [u8]) -> Result<(), getrandom::Error> {
    if out.len() > BATCH {
        return getrandom::fill(out);
    }
    BATCH_OF_THIS_THREAD.with(|batch| {
        let mut batch = batch.borrow_mut();
        if BATCH - batch.used < out.len() {
            getrandom::fill(&mut batch.bytes)?;
            batch.used = 0;
        }
        let (from, to) = (batch.used, batch.used + out.len());
        out.copy_from_slice(&batch.bytes[from..to]);
        // Handed out once: what is left in the batch says nothing of bytes already used.
        batch.bytes[from..to].fill(0);
        batch.used = to;
        Ok(())
    })
}

/// `N` random bytes ([`fill`]).
pub fn bytes<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    let mut out = [0u8; N];
    fill(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn used() -> usize {
        BATCH_OF_THIS_THREAD.with(|b| b.borrow().used)
    }

    #[test]
    fn bytes_come_from_one_batch_until_it_runs_out() {
        // A fresh thread: its batch starts empty, so the first call fetches one.
        std::thread::spawn(|| {
            assert_eq!(used(), BATCH);
            let a: [u8; 24] = bytes().unwrap();
            assert_eq!(used(), 24);
            let b: [u8; 24] = bytes().unwrap();
            assert_eq!(used(), 48);
            assert_ne!(a, b);
            // Handed-out bytes are zeroed in the batch; the rest is untouched.
            BATCH_OF_THIS_THREAD.with(|batch| {
                let batch = batch.borrow();
                assert!(batch.bytes[..48].iter().all(|&x| x == 0));
                assert!(batch.bytes[48..].iter().any(|&x| x != 0));
            });
            // 21 replies of 24 bytes fit in 512; the 22nd starts a new batch.
            for _ in 2..21 {
                let _: [u8; 24] = bytes().unwrap();
            }
            assert_eq!(used(), 21 * 24);
            let _: [u8; 24] = bytes().unwrap();
            assert_eq!(used(), 24);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_batch_is_used_to_its_last_byte() {
        std::thread::spawn(|| {
            // 32 draws of 16 bytes are exactly one batch: the last one takes its last bytes.
            for _ in 0..32 {
                let _: [u8; 16] = bytes().unwrap();
            }
            assert_eq!(used(), BATCH);
            // A draw of a whole batch is served from a fresh batch of its own.
            let _: [u8; 24] = bytes().unwrap();
            assert_eq!(used(), 24);
            let mut whole = [0u8; BATCH];
            fill(&mut whole).unwrap();
            assert_eq!(used(), BATCH);
            assert!(whole.iter().any(|&x| x != 0));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn no_bytes_are_handed_out_twice() {
        // 16-byte draws over several batches: a repeat would mean a byte went out twice.
        let draws: HashSet<[u8; 16]> = (0..2000).map(|_| bytes().unwrap()).collect();
        assert_eq!(draws.len(), 2000);
    }

    #[test]
    fn a_request_larger_than_a_batch_goes_to_the_os() {
        std::thread::spawn(|| {
            let mut big = [0u8; BATCH + 1];
            fill(&mut big).unwrap();
            assert!(big.iter().any(|&x| x != 0));
            assert_eq!(used(), BATCH, "the batch was not touched");
        })
        .join()
        .unwrap();
    }
}
