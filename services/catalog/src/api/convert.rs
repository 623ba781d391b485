//! The catalog's published language and its domain, converted at the edge:
//! every invalid field of a request reported at once, every answer built
//! from domain values.

use agora_contracts::agora::{catalog::v1 as pb, common::v1::Money as PbMoney};
use agora_platform::{
    Error, Violations,
    db::IdempotencyKey,
    wire::{parse_request_id, required, timestamp_from_micros, update_paths},
};

use crate::domain::{
    self, CatalogEvent, Family, Money, NewFamily, NewProduct, Product, ProductPatch, ProductState,
};

impl From<Family> for pb::Family {
    fn from(f: Family) -> Self {
        Self {
            family_id: f.id,
            display_name: f.display_name,
            description: f.description,
            create_time: Some(timestamp_from_micros(f.create_time)),
        }
    }
}

impl From<Product> for pb::Product {
    fn from(p: Product) -> Self {
        let state = match p.state {
            ProductState::Active => pb::ProductState::Active,
            ProductState::Discontinued => pb::ProductState::Discontinued,
        };
        Self {
            etag: p.etag(),
            product_id: p.id,
            display_name: p.display_name,
            description: p.description,
            family_id: p.family_id,
            price: Some(PbMoney { currency_code: p.price.currency_code, amount_minor: p.price.amount_minor }),
            state: state.into(),
            create_time: Some(timestamp_from_micros(p.create_time)),
            update_time: Some(timestamp_from_micros(p.update_time)),
        }
    }
}

/// An event of the outbox as the change feed tells it.
pub fn event_kind(event: CatalogEvent) -> pb::catalog_event::Kind {
    use pb::catalog_event::Kind;
    match event {
        CatalogEvent::ProductCreated(p) => {
            Kind::ProductCreated(pb::ProductCreated { product: Some(p.into()) })
        }
        CatalogEvent::ProductUpdated(p) => {
            Kind::ProductUpdated(pb::ProductUpdated { product: Some(p.into()) })
        }
        CatalogEvent::ProductDiscontinued { product_id } => {
            Kind::ProductDiscontinued(pb::ProductDiscontinued { product_id })
        }
    }
}

/// A price from the wire; problems are reported under `field`.
fn price(v: &mut Violations, field: &str, price: Option<&PbMoney>) -> Option<Money> {
    let Some(price) = price else {
        v.add(field, "is required");
        return None;
    };
    match Money::parse(&price.currency_code, price.amount_minor) {
        Ok(money) => Some(money),
        Err(problems) => {
            for (part, description) in problems {
                v.add(format!("{field}.{part}"), description);
            }
            None
        }
    }
}

/// A state filter: UNSPECIFIED is "any".
pub fn state_filter(v: &mut Violations, field: &str, raw: i32) -> Option<ProductState> {
    match pb::ProductState::try_from(raw) {
        Ok(pb::ProductState::Unspecified) => None,
        Ok(pb::ProductState::Active) => Some(ProductState::Active),
        Ok(pb::ProductState::Discontinued) => Some(ProductState::Discontinued),
        Err(_) => {
            v.add(field, format!("{raw} is not a ProductState"));
            None
        }
    }
}

pub fn new_family(request: pb::CreateFamilyRequest) -> Result<NewFamily, Error> {
    let f = required("family", request.family)?;
    let mut v = Violations::new();
    let display_name = v.check("family.display_name", domain::parse_display_name(&f.display_name));
    let description = v.check("family.description", domain::parse_description(&f.description));
    v.finish()?;
    Ok(NewFamily {
        display_name: display_name.unwrap_or_default(),
        description: description.unwrap_or_default(),
    })
}

/// The product to create and its idempotency key, checked together so one
/// answer names every problem.
pub fn new_product(request: pb::CreateProductRequest) -> Result<(Option<IdempotencyKey>, NewProduct), Error> {
    let mut v = Violations::new();
    let request_id = v.check("request_id", parse_request_id(&request.request_id)).flatten();
    let Some(p) = request.product else {
        v.add("product", "is required");
        return Err(v.finish().unwrap_err());
    };
    let display_name = v.check("product.display_name", domain::parse_display_name(&p.display_name));
    let description = v.check("product.description", domain::parse_description(&p.description));
    let family_id = v.check("product.family_id", domain::parse_id(&p.family_id));
    let price = price(&mut v, "product.price", p.price.as_ref());
    v.finish()?;
    let new = NewProduct {
        display_name: display_name.unwrap_or_default(),
        description: description.unwrap_or_default(),
        family_id: family_id.unwrap_or_default(),
        price: price.expect("checked by finish"),
    };
    Ok((IdempotencyKey::of(request_id, "product", || new.fingerprint()), new))
}

/// The fields an UpdateProduct changes. With no mask, every updatable field
/// set in the request is updated (AIP-134).
pub fn patch(p: &pb::Product, mask: Option<prost_types::FieldMask>) -> Result<ProductPatch, Error> {
    let mut v = Violations::new();
    let paths = update_paths(
        mask,
        &[
            (!p.display_name.is_empty(), "display_name"),
            (!p.description.is_empty(), "description"),
            (!p.family_id.is_empty(), "family_id"),
            (p.price.is_some(), "price"),
        ],
    );
    let mut patch = ProductPatch::default();
    for path in &paths {
        match path.as_str() {
            "display_name" => {
                patch.display_name =
                    v.check("product.display_name", domain::parse_display_name(&p.display_name))
            }
            "description" => {
                patch.description = v.check("product.description", domain::parse_description(&p.description))
            }
            "family_id" => patch.family_id = v.check("product.family_id", domain::parse_id(&p.family_id)),
            "price" => patch.price = price(&mut v, "product.price", p.price.as_ref()),
            "product_id" | "state" | "etag" | "create_time" | "update_time" => {
                v.add("update_mask", format!("{path:?} cannot be updated"))
            }
            other => v.add("update_mask", format!("{other:?} is not a field of Product")),
        }
    }
    if paths.is_empty() {
        v.add("update_mask", "names no field to update");
    }
    v.finish()?;
    Ok(patch)
}
