"""Storage: the junodcs storage element (WebDAV + HTTP-TPC, `storage.server`) and the storage client
(`storage.client`), one interface over https/davs/http/file URLs used by the data manager and transfers."""
