//! A counting semaphore bounding the copy buffers in flight.

use parking_lot::{Condvar, Mutex};

pub struct Budget {
    available: Mutex<usize>,
    returned: Condvar,
}

pub struct Permit<'a>(&'a Budget);

impl Budget {
    pub fn new(permits: usize) -> Budget {
        assert!(permits > 0);
        Budget {
            available: Mutex::new(permits),
            returned: Condvar::new(),
        }
    }

    /// Waits for a permit. A thread holds at most one at a time, so this cannot deadlock.
    pub fn acquire(&self) -> Permit<'_> {
        let mut n = self.available.lock();
        while *n == 0 {
            self.returned.wait(&mut n);
        }
        *n -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.available.lock() += 1;
        self.0.returned.notify_one();
    }
}
