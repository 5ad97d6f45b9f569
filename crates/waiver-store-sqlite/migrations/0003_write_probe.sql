-- One row rewritten by the readiness probe after a write failed: can a page be committed now?
CREATE TABLE write_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at TEXT NOT NULL
);
