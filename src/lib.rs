//! The published language of Agora: the protobuf contracts of every bounded
//! context, compiled to Rust, and the descriptor set that server reflection
//! serves.
//!
//! # Layout
//! - [`agora::common::v1`]: small value types shared by contexts (money).
//! - [`agora::catalog::v1`]: products and their families (upstream).
//! - [`agora::customers::v1`]: who shops (upstream).
//! - [`agora::offers::v1`]: timed offers on products (downstream).
//! - [`agora::shopping::v1`]: shopping lists (downstream).
//! - [`FILE_DESCRIPTOR_SET`]: every file above plus the well-known types
//!   they import, for `tonic-reflection`.
#![forbid(unsafe_code)]

/// Generated code, one module per protobuf package.
pub mod agora {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("agora.common.v1");
        }
    }
    pub mod catalog {
        pub mod v1 {
            tonic::include_proto!("agora.catalog.v1");
        }
    }
    pub mod customers {
        pub mod v1 {
            tonic::include_proto!("agora.customers.v1");
        }
    }
    pub mod offers {
        pub mod v1 {
            tonic::include_proto!("agora.offers.v1");
        }
    }
    pub mod shopping {
        pub mod v1 {
            tonic::include_proto!("agora.shopping.v1");
        }
    }
}

/// The encoded `google.protobuf.FileDescriptorSet` of every contract, with
/// imports included, as server reflection needs it.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("agora_descriptor");
