//! A local stand-in of the onsmqtt 2020-04-20 OpenAPI.
