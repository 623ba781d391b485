//! What a careless or hostile client gets: answers that fit the message
//! size limit whatever the rows hold, and errors of a few KB whatever the
//! request held.

use crate::common::*;
use futures_util::StreamExt as _;
use prost::Message as _;
use prost_types::FieldMask;
use tonic::Code;

agora_testing::on_both_backends!(pages_and_stream_messages_are_bounded_in_bytes);

/// The smallest message size limit a server accepts: 64 KiB.
const LIMIT: usize = 64 << 10;

/// Products of the longest multi-byte description, more of them than one
/// message holds: a page of 1,000 ends early with a token, and the stream
/// splits its batches, each message under the limit.
async fn pages_and_stream_messages_are_bounded_in_bytes(db: TestDatabase) {
    let mut c = start_with(db, |s| s.max_message_bytes = LIMIT).await;
    let fam = family(&mut c.client, "Posters").await;
    let mut created = Vec::new();
    for i in 0..12 {
        let mut p = new_product(&fam.family_id, &format!("Poster {i}"), 100);
        p.description = "€".repeat(2000); // 6,000 bytes
        let request = pb::CreateProductRequest { request_id: String::new(), product: Some(p) };
        created
            .push(c.client.create_product(request).await.unwrap().into_inner().product.unwrap().product_id);
    }

    let mut listed = Vec::new();
    let mut token = String::new();
    for _ in 0..12 {
        let request = pb::ListProductsRequest { page_size: 1000, page_token: token, ..Default::default() };
        let page = c.client.list_products(request).await.expect("a page that fits").into_inner();
        assert!(page.encoded_len() <= LIMIT, "a page of {} bytes", page.encoded_len());
        assert!(!page.products.is_empty());
        listed.extend(page.products.into_iter().map(|p| p.product_id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(listed, created, "every product once, in order, over several pages");

    let request = pb::StreamProductsRequest::default();
    let mut stream = c.client.stream_products(request).await.unwrap().into_inner();
    let (mut streamed, mut messages) = (Vec::new(), 0);
    while let Some(message) = stream.next().await {
        let message = message.expect("a message that fits");
        assert!(message.encoded_len() <= LIMIT);
        messages += 1;
        streamed.extend(message.products.into_iter().map(|p| p.product_id));
    }
    assert_eq!(streamed, created);
    assert!(messages > 1, "one batch of rows, several messages");
}

/// An update_mask of 100,000 unknown paths (a 1.6 MB request) is refused
/// with an answer of a few KB: ten violations at most, each cut short.
#[tokio::test]
async fn errors_stay_small_whatever_the_request_held() {
    let mut c = start(TestDatabase::sqlite()).await;
    let fam = family(&mut c.client, "Screens").await;
    let p = product(&mut c.client, &fam.family_id, "Screen", 100).await;
    let paths = (0..100_000).map(|i| format!("no_such_field_{i}")).collect();
    let err = c
        .client
        .update_product(pb::UpdateProductRequest {
            product: Some(pb::Product { product_id: p.product_id, ..Default::default() }),
            update_mask: Some(FieldMask { paths }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() < 4096, "a message of {} bytes", err.message().len());
    assert!(err.details().len() < 4096, "details of {} bytes", err.details().len());
    let fields = bad_fields(&err);
    assert_eq!(fields.len(), 10, "{fields:?}");
}
