CREATE TABLE participants (
	id VARCHAR(63) NOT NULL, 
	public_key BLOB NOT NULL, 
	role VARCHAR(16) NOT NULL, 
	enrolled_at FLOAT NOT NULL, 
	revoked_at FLOAT, 
	PRIMARY KEY (id), 
	UNIQUE (public_key)
);

CREATE TABLE rounds (
	id VARCHAR(32) NOT NULL, 
	created_at FLOAT NOT NULL, 
	parameters TEXT NOT NULL, 
	stage VARCHAR(40) NOT NULL, 
	closed_stages INTEGER NOT NULL, 
	revision INTEGER NOT NULL, 
	stage_started_at FLOAT NOT NULL, 
	stage_deadline FLOAT, 
	expected TEXT NOT NULL, 
	history TEXT NOT NULL, 
	session_id BLOB, 
	outcome VARCHAR(16), 
	abort_reason VARCHAR(40), 
	abort_detail TEXT, 
	finished_at FLOAT, 
	survivors TEXT, 
	masked_sum BLOB, 
	result BLOB, 
	result_sha256 VARCHAR(64), 
	ledger_recorded BOOLEAN NOT NULL, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_rounds_stage_deadline ON rounds (stage_deadline);

CREATE INDEX ix_rounds_stage ON rounds (stage);

CREATE INDEX ix_rounds_created_at ON rounds (created_at);

CREATE INDEX ix_rounds_ledger_recorded ON rounds (ledger_recorded);

CREATE TABLE round_members (
	round_id VARCHAR(32) NOT NULL, 
	"index" INTEGER NOT NULL, 
	participant_id VARCHAR(63) NOT NULL, 
	public_key BLOB NOT NULL, 
	PRIMARY KEY (round_id, "index"), 
	CONSTRAINT uq_round_member_participant UNIQUE (round_id, participant_id), 
	FOREIGN KEY(round_id) REFERENCES rounds (id) ON DELETE CASCADE, 
	FOREIGN KEY(participant_id) REFERENCES participants (id)
);

CREATE INDEX ix_round_members_participant_id ON round_members (participant_id);

CREATE TABLE submissions (
	id INTEGER NOT NULL, 
	round_id VARCHAR(32) NOT NULL, 
	stage VARCHAR(40) NOT NULL, 
	sender INTEGER NOT NULL, 
	body BLOB, 
	body_sha256 VARCHAR(64) NOT NULL, 
	size INTEGER NOT NULL, 
	received_at FLOAT NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_submission_once_per_stage UNIQUE (round_id, stage, sender), 
	FOREIGN KEY(round_id) REFERENCES rounds (id) ON DELETE CASCADE
);

CREATE INDEX ix_submissions_round_id ON submissions (round_id);

CREATE TABLE outbound (
	round_id VARCHAR(32) NOT NULL, 
	stage VARCHAR(40) NOT NULL, 
	recipient INTEGER NOT NULL, 
	message_type VARCHAR(40) NOT NULL, 
	body BLOB NOT NULL, 
	PRIMARY KEY (round_id, stage, recipient), 
	FOREIGN KEY(round_id) REFERENCES rounds (id) ON DELETE CASCADE
);
