-- 0005_application_id: mark the file as a hybridlog catalog (SQLite's application_id header field,
-- 0x484C4F47, "HLOG"). A catalog.db that carries another application's id, or that lost its own
-- once it was set, is not a usable catalog. Documented in docs/schema.md.

PRAGMA application_id = 1212960583;
