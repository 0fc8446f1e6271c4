-- Second database for the Iceberg REST catalog's JDBC backend (kappa_catalog is created
-- by POSTGRES_DB and holds kappa's SQL catalog).
CREATE DATABASE iceberg_rest OWNER kappa;
