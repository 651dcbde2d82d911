//! [`put`]: the free-list slot reuse shared by the requester's ops and lends and the node's
//! lent payloads (indices stay stable while in use, so they can travel as keys).

/// Stores `x` in a free slot of `v` (from `free`), or a new one; returns its index.
pub(crate) fn put<T>(v: &mut Vec<T>, free: &mut Vec<usize>, x: T) -> usize {
    match free.pop() {
        Some(i) => {
            v[i] = x;
            i
        }
        None => {
            v.push(x);
            v.len() - 1
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reuses_freed_slots_first() {
        let mut v = Vec::new();
        let mut free = Vec::new();
        assert_eq!(super::put(&mut v, &mut free, 'a'), 0);
        assert_eq!(super::put(&mut v, &mut free, 'b'), 1);
        free.push(0);
        assert_eq!(super::put(&mut v, &mut free, 'c'), 0);
        assert_eq!(v, ['c', 'b']);
    }
}
