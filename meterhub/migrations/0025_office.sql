-- Office (办公管理): documents with versions, work plans, news for the home page, internal messages.

-- A document is a title, tags and a line of versions; each version keeps its bytes (bytea, at most
-- 10 MiB), and its text where the file is plain text, so that search can look inside cheaply.
CREATE TABLE office_document (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title           text NOT NULL CHECK (length(trim(title)) BETWEEN 1 AND 200),
    tags            text[] NOT NULL DEFAULT '{}',
    description     text NOT NULL DEFAULT '',
    current_version integer NOT NULL DEFAULT 0,
    created_by      text NOT NULL DEFAULT meterhub_actor(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX office_document_tags_idx ON office_document USING gin (tags);

-- Versions are never changed or removed: a new upload is a new version.
CREATE TABLE office_document_version (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    document_id  bigint NOT NULL REFERENCES office_document (id),
    version      integer NOT NULL CHECK (version >= 1),
    filename     text NOT NULL CHECK (length(filename) BETWEEN 1 AND 255),
    content_type text NOT NULL,
    size_bytes   integer NOT NULL CHECK (size_bytes BETWEEN 0 AND 10485760),
    sha256       text NOT NULL,
    content      bytea NOT NULL CHECK (octet_length(content) <= 10485760),
    text_content text NOT NULL DEFAULT '',
    note         text NOT NULL DEFAULT '',
    uploaded_by  text NOT NULL DEFAULT meterhub_actor(),
    uploaded_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (document_id, version)
);
CREATE TRIGGER office_document_version_append_only BEFORE UPDATE OR DELETE ON office_document_version
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();

-- Work plans (工作计划): who, from when until when, how far.
CREATE TABLE work_plan (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title       text NOT NULL CHECK (length(trim(title)) BETWEEN 1 AND 200),
    description text NOT NULL DEFAULT '',
    owner_id    bigint NOT NULL REFERENCES staff_user (id),
    starts_on   date NOT NULL,
    due_on      date NOT NULL,
    status      text NOT NULL DEFAULT 'planned' CHECK (status IN ('planned', 'in_progress', 'done', 'cancelled')),
    created_by  text NOT NULL DEFAULT meterhub_actor(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (due_on >= starts_on)
);
CREATE INDEX work_plan_owner_idx ON work_plan (owner_id, due_on);

-- News (新闻公告): shown on everyone's home page while published.
CREATE TABLE office_news (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title        text NOT NULL CHECK (length(trim(title)) BETWEEN 1 AND 200),
    body         text NOT NULL DEFAULT '',
    published    boolean NOT NULL DEFAULT false,
    published_at timestamptz,
    created_by   text NOT NULL DEFAULT meterhub_actor(),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (NOT published OR published_at IS NOT NULL)
);
CREATE INDEX office_news_published_idx ON office_news (published_at DESC) WHERE published;

-- Internal messages (站内消息): one message, one row per recipient with its read time. A message to a
-- role reaches the active users who had that role when it was sent.
CREATE TABLE office_message (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sender_id bigint NOT NULL REFERENCES staff_user (id),
    to_role   text,
    subject   text NOT NULL CHECK (length(trim(subject)) BETWEEN 1 AND 200),
    body      text NOT NULL DEFAULT '',
    sent_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX office_message_sender_idx ON office_message (sender_id, sent_at DESC);
CREATE TRIGGER office_message_append_only BEFORE UPDATE OR DELETE ON office_message
    FOR EACH ROW EXECUTE FUNCTION meterhub_forbid_change();

CREATE TABLE office_message_recipient (
    message_id bigint NOT NULL REFERENCES office_message (id),
    user_id    bigint NOT NULL REFERENCES staff_user (id),
    read_at    timestamptz,
    PRIMARY KEY (message_id, user_id)
);
CREATE INDEX office_message_recipient_user_idx ON office_message_recipient (user_id, message_id DESC);
