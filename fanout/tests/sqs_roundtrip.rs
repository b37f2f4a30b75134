//! Round trip on moto server with the real SDK: PutItem on the stream-enabled navigation
//! table → the stream read with aws-sdk-dynamodbstreams → the handler → SQS.

use aws::provision::{TableNames, create_tables};
use aws::testing::{emulator_config, unique};
use aws::{DynamoRecordStore, SnsAlerts, SqsQueues};
use aws_sdk_dynamodbstreams::types::ShardIteratorType;
use domain::{
    ChangeKind, ChangeRecord, ClientId, Crm, DeliveryMessage, GtmEvent, NavigationRecord,
    QueueKind, RecordStore, SystemClock,
};
use fanout::lambda::decode_image;
use fanout::{FanoutHandler, FanoutSettings, Skip};
use serde_json::json;
use std::collections::HashMap;

fn record(crm: Crm, client: &str, event_id: Option<&str>) -> NavigationRecord {
    let mut body = json!({"clientId": client, "tid": "GA4.1.2", "email": "Ana@Example.com",
        "eventType": "purchase", "productId": "SKU-1", "productPrice": 10.5});
    if let Some(e) = event_id {
        body["eventId"] = json!(e);
    }
    let event = GtmEvent::parse(crm, body).expect("valid");
    NavigationRecord::new(
        event,
        ClientId::parse(client).expect("id"),
        crm,
        1_706_457_600_000,
        48,
    )
}

/// Every record of every shard of the stream, as the fanout sees them.
async fn read_stream(config: &aws_config::SdkConfig, stream_arn: &str) -> Vec<ChangeRecord> {
    let streams = aws_sdk_dynamodbstreams::Client::new(config);
    let description = streams
        .describe_stream()
        .stream_arn(stream_arn)
        .send()
        .await
        .expect("describe stream")
        .stream_description
        .expect("description");
    let mut changes = Vec::new();
    for shard in description.shards() {
        let iterator = streams
            .get_shard_iterator()
            .stream_arn(stream_arn)
            .shard_id(shard.shard_id().expect("shard id"))
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("iterator")
            .shard_iterator
            .expect("iterator");
        let out = streams
            .get_records()
            .shard_iterator(iterator)
            .send()
            .await
            .expect("records");
        for r in out.records() {
            let data = r.dynamodb().expect("stream record");
            let item: serde_dynamo::Item = data.new_image().cloned().unwrap_or_default().into();
            changes.push(ChangeRecord {
                sequence_number: data.sequence_number().expect("sequence").to_owned(),
                kind: r.event_name().and_then(|n| ChangeKind::parse(n.as_str())),
                ttl_expiry: false,
                image: decode_image(&item),
            });
        }
    }
    changes
}

#[tokio::test]
async fn put_item_to_stream_to_handler_to_sqs() {
    let Some(config) = emulator_config().await else {
        return;
    };
    let ddb = aws_sdk_dynamodb::Client::new(&config);
    let names = TableNames::with_prefix(&unique("fanout"));
    let stream_arn = create_tables(&ddb, &names).await.expect("tables");
    let sqs = aws_sdk_sqs::Client::new(&config);
    let sns = aws_sdk_sns::Client::new(&config);
    let mut queues = SqsQueues::new(sqs.clone());
    for crm in Crm::all() {
        for kind in [QueueKind::Delivery, QueueKind::DeadLetter] {
            let name = unique(&format!(
                "{crm}-{}",
                if kind == QueueKind::Delivery {
                    "delivery"
                } else {
                    "dlq"
                }
            ));
            let url = sqs
                .create_queue()
                .queue_name(name)
                .send()
                .await
                .expect("queue")
                .queue_url
                .expect("url");
            queues = queues.with_queue(crm, kind, url);
        }
    }
    let topic = sns
        .create_topic()
        .name(unique("alerts"))
        .send()
        .await
        .expect("topic")
        .topic_arn
        .expect("arn");

    let store = DynamoRecordStore::new(ddb, &names.navigation);
    let idempotent = record(Crm::RESPONSYS, "shop-a", Some("evt-1"));
    let plain = record(Crm::SFMC, "shop-sf", None);
    store
        .put_if_absent(idempotent.clone().into())
        .await
        .expect("put");
    store
        .put_if_absent(plain.clone().into())
        .await
        .expect("put");

    let changes = read_stream(&config, &stream_arn).await;
    // One item per record: the idempotent one is a single conditional put (no marker),
    // keyed by its day, with its receipt time in `receivedAt`.
    assert_eq!(changes.len(), 2, "two records, no idempotency marker");

    let handler = FanoutHandler::new(
        queues.clone(),
        SnsAlerts::new(sns, topic),
        SystemClock,
        FanoutSettings::default(),
        "fanout",
    );
    let outcome = handler.handle(&changes).await;
    assert_eq!(outcome.first_failure, None);
    assert_eq!(outcome.routed.get(&Crm::RESPONSYS), Some(&1));
    assert_eq!(outcome.routed.get(&Crm::SFMC), Some(&1));
    assert_eq!(outcome.skipped.get(&Skip::Marker), None);

    for (crm, expected) in [(Crm::RESPONSYS, &idempotent), (Crm::SFMC, &plain)] {
        let url = queues.url(crm, QueueKind::Delivery).expect("url");
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive");
        let messages = out.messages();
        assert_eq!(messages.len(), 1, "{crm}");
        let body: DeliveryMessage =
            serde_json::from_str(messages[0].body().expect("body")).expect("json");
        assert_eq!(body, DeliveryMessage::from_record(expected.clone()));
        let attrs: HashMap<String, String> = messages[0]
            .message_attributes()
            .expect("attributes")
            .iter()
            .map(|(k, v)| (k.clone(), v.string_value().unwrap_or_default().to_owned()))
            .collect();
        assert_eq!(attrs["clientId"], expected.client_id.as_str());
        assert_eq!(attrs["crm"], crm.as_str());
        assert_eq!(attrs["eventType"], "purchase");
    }
    let rd = queues
        .url(Crm::RDSTATION, QueueKind::Delivery)
        .expect("url");
    let none = sqs
        .receive_message()
        .queue_url(rd)
        .send()
        .await
        .expect("receive");
    assert!(none.messages().is_empty());
}
