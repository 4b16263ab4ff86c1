//! Per-thread scratch memory that kernels reuse from launch to launch.
//!
//! Convolutions need large temporary buffers (im2col columns, partial
//! products). Allocating them per launch costs more than it seems: the
//! allocator zeroes them, or maps fresh pages that fault on first touch,
//! every call. A [`Scratch`] instead borrows a buffer from a small per-thread
//! free list and gives it back on drop.
//!
//! The contents are **not** cleared: a buffer holds whatever the last user
//! left in it, so a kernel may only read what it wrote in the same launch.
//! Every element is still initialized memory (the free list only holds
//! buffers that were zero-filled when they grew), so no read is undefined,
//! only possibly stale.

use std::cell::RefCell;

use bytemuck::Pod;

/// At most this many idle buffers are kept per thread.
const KEEP: usize = 4;
/// Buffers larger than this (in bytes) go back to the allocator on drop
/// instead of being kept.
const KEEP_BYTES: usize = 256 << 20;

thread_local! {
    static FREE: RefCell<Vec<Vec<u64>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of at least `len` elements of `T`, borrowed from this thread's
/// free list (see the module docs: its contents are stale).
pub(crate) struct Scratch<T> {
    words: Vec<u64>,
    len: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T: Pod> Scratch<T> {
    pub(crate) fn new(len: usize) -> Scratch<T> {
        // `T` is at most 8 bytes and its alignment divides 8 (f32, f64 and
        // the int types): `cast_slice_mut` below checks both.
        let words_needed = (len * std::mem::size_of::<T>()).div_ceil(8);
        let mut words = FREE
            .try_with(|free| {
                let mut free = free.try_borrow_mut().ok()?;
                // The smallest idle buffer that is big enough, else the
                // largest (grown below).
                let pick = (0..free.len())
                    .filter(|&i| free[i].len() >= words_needed)
                    .min_by_key(|&i| free[i].len())
                    .or_else(|| (0..free.len()).max_by_key(|&i| free[i].len()))?;
                Some(free.swap_remove(pick))
            })
            .ok()
            .flatten()
            .unwrap_or_default();
        if words.len() < words_needed {
            words.resize(words_needed, 0);
        }
        Scratch {
            words,
            len,
            _t: std::marker::PhantomData,
        }
    }

    pub(crate) fn as_mut(&mut self) -> &mut [T] {
        &mut bytemuck::cast_slice_mut::<u64, T>(&mut self.words)[..self.len]
    }
}

impl<T> Drop for Scratch<T> {
    fn drop(&mut self) {
        let words = std::mem::take(&mut self.words);
        if words.len() * 8 > KEEP_BYTES {
            return;
        }
        let _ = FREE.try_with(|free| {
            if let Ok(mut free) = free.try_borrow_mut() {
                if free.len() < KEEP {
                    free.push(words);
                } else if let Some(small) = free.iter_mut().min_by_key(|w| w.len()) {
                    if small.len() < words.len() {
                        *small = words;
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_sized() {
        let first_ptr = {
            let mut a = Scratch::<f32>::new(1000);
            assert_eq!(a.as_mut().len(), 1000);
            a.as_mut().fill(7.0);
            a.as_mut().as_ptr() as usize
        };
        // The same thread gets the same storage back, contents untouched.
        let mut b = Scratch::<f32>::new(500);
        assert_eq!(b.as_mut().len(), 500);
        assert_eq!(b.as_mut().as_ptr() as usize, first_ptr);
        assert!(b.as_mut().iter().all(|&v| v == 7.0));
        // A second live buffer is distinct, and f64 views work.
        let mut c = Scratch::<f64>::new(3);
        assert_ne!(c.as_mut().as_ptr() as usize, first_ptr);
        c.as_mut().copy_from_slice(&[1.0, 2.0, 3.0]);
        assert_eq!(c.as_mut(), &[1.0, 2.0, 3.0]);
        // Odd sizes round up to whole words.
        let mut d = Scratch::<u8>::new(13);
        assert_eq!(d.as_mut().len(), 13);
    }
}
