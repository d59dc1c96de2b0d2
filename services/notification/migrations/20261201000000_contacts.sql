-- Contact data from the user service (portable SQL, Postgres and SQLite): the email and marketing
-- consent of each user as the latest `user.updated` snapshot says (`version` is the profile's, so
-- an older snapshot never overwrites a newer one). An erased user (`user.deleted`) keeps a row
-- with the email emptied and `erased_at_us` set, so a late snapshot cannot bring it back.
CREATE TABLE contacts (
    user_id         TEXT   PRIMARY KEY,
    email           TEXT   NOT NULL,
    marketing_email BIGINT NOT NULL,
    marketing_sms   BIGINT NOT NULL,
    marketing_push  BIGINT NOT NULL,
    locale          TEXT   NOT NULL,
    version         BIGINT NOT NULL,
    erased_at_us    BIGINT
);

-- Notification no longer keeps its own copy of a user's email: it is the user service's.
ALTER TABLE preferences DROP COLUMN email;
