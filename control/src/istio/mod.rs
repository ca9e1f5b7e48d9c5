//! Istio's networking kinds (`VirtualService`, `DestinationRule`), as the API server
//! returns them in `v1alpha3`, `v1beta1` and `v1` (one schema).
