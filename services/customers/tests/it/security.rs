//! Who may call customers: the authorization matrix of its policy, and the
//! audit trail of customer changes, with ids only.

use agora_testing::{Captured, Who, matrix};
use prost_types::FieldMask;

use crate::common::*;
use pb::customer_service_client::CustomerServiceClient;

#[tokio::test]
async fn every_rpc_answers_every_caller_as_the_policy_says() {
    let c = start(TestDatabase::sqlite()).await;
    let staff = c.client.clone();
    let mut n = 0;
    matrix::check("customers", &agora_customers::api::POLICY, async |method, role| {
        n += 1;
        let mut staff = staff.clone();
        let email = format!("matrix.{n}@example.com");
        // The resource of the call: a customer of its own, when it needs one.
        let owner = match method {
            "GetCustomer" | "UpdateCustomer" | "DeleteCustomer" => {
                customer(&mut staff, "Ada", "Lovelace", &email).await.customer_id
            }
            _ => format!("cus_{n}"),
        };
        let mut client = CustomerServiceClient::new(matrix::channel(c.server.grpc_addr, role, &owner));
        match method {
            "CreateCustomer" => client
                .create_customer(pb::CreateCustomerRequest {
                    customer: Some(new_customer("Ada", "Lovelace", &format!("new.{email}"))),
                })
                .await
                .map(drop),
            "GetCustomer" => {
                client.get_customer(pb::GetCustomerRequest { customer_id: owner }).await.map(drop)
            }
            "ListCustomers" => client.list_customers(pb::ListCustomersRequest::default()).await.map(drop),
            "UpdateCustomer" => client
                .update_customer(pb::UpdateCustomerRequest {
                    customer: Some(pb::Customer {
                        customer_id: owner,
                        given_name: "Ida".into(),
                        ..Default::default()
                    }),
                    update_mask: Some(FieldMask { paths: vec!["given_name".into()] }),
                })
                .await
                .map(drop),
            "DeleteCustomer" => client
                .delete_customer(pb::DeleteCustomerRequest { customer_id: owner, etag: String::new() })
                .await
                .map(drop),
            "WatchCustomerEvents" => client
                .watch_customer_events(pb::WatchCustomerEventsRequest { after_sequence: 0 })
                .await
                .map(drop),
            other => panic!("the matrix has no call of {other}"),
        }
    })
    .await;
}

/// A customer reads and closes their own record only; the changes of a
/// record are audited by id, whoever makes them, and carry no address.
#[tokio::test]
async fn a_customer_manages_their_own_record_and_changes_are_audited() {
    let logs = Captured::install(tracing::Level::INFO);
    let mut c = start(TestDatabase::sqlite()).await;
    let ana = customer(&mut c.client, "Ana", "Lima", "ana.audit@example.com").await;
    let bruno = customer(&mut c.client, "Bruno", "Costa", "bruno.audit@example.com").await;
    let mut as_ana = CustomerServiceClient::new(c.server.channel_as(&Who::customer(&ana.customer_id)));
    as_ana.get_customer(pb::GetCustomerRequest { customer_id: ana.customer_id.clone() }).await.unwrap();
    for id in [bruno.customer_id.as_str(), "cus_nobody"] {
        let err = as_ana.get_customer(pb::GetCustomerRequest { customer_id: id.into() }).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{id}: {err:?}");
    }
    let request = pb::DeleteCustomerRequest { customer_id: ana.customer_id.clone(), etag: String::new() };
    as_ana.delete_customer(request).await.unwrap();

    let text = logs.text();
    let audit: Vec<&str> = text.lines().filter(|l| l.contains("agora::audit")).collect();
    assert_eq!(audit.len(), 3, "{audit:#?}");
    for (line, who, rpc, resource) in [
        (audit[0], "staff:staff-1", "CreateCustomer", &ana.customer_id),
        (audit[1], "staff:staff-1", "CreateCustomer", &bruno.customer_id),
        (audit[2], &format!("customer:{}", ana.customer_id), "DeleteCustomer", &ana.customer_id),
    ] {
        for part in [format!("who=\"{who}\""), format!("rpc=\"{rpc}\""), format!("resource=\"{resource}\"")] {
            assert!(line.contains(&part), "{part} missing from {line}");
        }
        assert!(line.contains("outcome=\"OK\"") && !line.contains("@example.com"), "{line}");
    }
}
