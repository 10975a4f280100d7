//! Many small blocking reads (every app's files, every app's kept versions)
//! on a few threads of their own.
//!
//! A start-up with thousands of apps reads thousands of files. From the page
//! cache that is copying, one core's work per thread; from disk it is mostly
//! waiting, and reads in flight at once overlap that wait. So there are at
//! least [`MIN_READERS`] threads whatever the cores: 10,000 `.wasm` files
//! (1.2 GB) not in the page cache took 4.1 s to read on one thread and
//! 2.0 s on eight, on the 2-core build VM (`cat` and `xargs -P`).

/// Reads run on at least this many threads, even on fewer cores.
const MIN_READERS: usize = 8;

/// Fewer items than this per thread are read on fewer threads: a thread
/// costs more than a few small reads.
const MIN_ITEMS_PER_READER: usize = 64;

/// Applies `read` to every item, on up to `max(cores, MIN_READERS)` scoped
/// threads, and returns the results in the items' order. The items of a
/// thread that panicked are left out (their caller reads them again on its
/// next pass, or reports them missing).
pub(crate) fn read_all<T, R>(items: Vec<T>, read: impl Fn(T) -> R + Sync) -> Vec<R>
where
    T: Send,
    R: Send,
{
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = cores
        .max(MIN_READERS)
        .min(items.len().div_ceil(MIN_ITEMS_PER_READER));
    if threads <= 1 {
        return items.into_iter().map(read).collect();
    }
    let per_thread = items.len().div_ceil(threads);
    let mut chunks = Vec::with_capacity(threads);
    let mut rest = items;
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(per_thread));
        chunks.push(rest);
        rest = tail;
    }
    let read = &read;
    std::thread::scope(|scope| {
        let readers: Vec<_> = chunks
            .into_iter()
            .map(|chunk| scope.spawn(move || chunk.into_iter().map(read).collect::<Vec<R>>()))
            .collect();
        readers
            .into_iter()
            .flat_map(|reader| reader.join().unwrap_or_default())
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item is read once, and the results keep the items' order,
    /// whether one thread reads them or many.
    #[test]
    fn results_keep_the_items_order() {
        for count in [0, 1, 63, 64, 65, 1000, 4321] {
            let items: Vec<usize> = (0..count).collect();
            let read = read_all(items, |i| i * 2);
            assert_eq!(
                read,
                (0..count).map(|i| i * 2).collect::<Vec<_>>(),
                "{count}"
            );
        }
    }

    /// Items are spread over several threads once there are enough.
    #[test]
    fn many_items_are_read_on_several_threads() {
        let items: Vec<usize> = (0..10 * MIN_ITEMS_PER_READER).collect();
        let threads = read_all(items, |_| std::thread::current().id());
        let distinct: std::collections::HashSet<_> = threads.into_iter().collect();
        assert!(distinct.len() > 1, "{} threads", distinct.len());
    }
}
