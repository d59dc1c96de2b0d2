//! Reading a paged listing to its end.

use std::future::Future;

/// Every item of a listing read `page_size` at a time: `fetch(page_token)` answers one page and
/// its next page token (empty at the end). Asserts that every page before the last is full, so a
/// listing filtered after the fact (short pages) fails the test.
pub async fn every_page<T, F, Fut>(page_size: usize, mut fetch: F) -> Vec<T>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = (Vec<T>, String)>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next) = fetch(token).await;
        assert!(
            page.len() == page_size || next.is_empty(),
            "a page of {} items before the end of the listing (page size {page_size})",
            page.len()
        );
        items.extend(page);
        if next.is_empty() {
            return items;
        }
        token = next;
    }
}
