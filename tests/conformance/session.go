// The Session model of the seed's Go SDK (shared/spec/livepeer-go-session.md and the
// enums it links), written the way Speakeasy generates it: pointers for optional fields,
// enum types whose UnmarshalJSON rejects every value they do not list, and required
// fields that must be present. Unknown fields are ignored, as encoding/json does.

package main

import (
	"encoding/json"
	"fmt"
)

// RecordingStatus - The status of the recording process of this stream session.
type RecordingStatus string

const (
	RecordingStatusWaiting RecordingStatus = "waiting"
	RecordingStatusReady   RecordingStatus = "ready"
	RecordingStatusFailed  RecordingStatus = "failed"
	RecordingStatusNone    RecordingStatus = "none"
)

func (e *RecordingStatus) UnmarshalJSON(data []byte) error {
	var v string
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	switch v {
	case "waiting", "ready", "failed", "none":
		*e = RecordingStatus(v)
		return nil
	default:
		return fmt.Errorf("invalid value for RecordingStatus: %v", v)
	}
}

// FfmpegProfileProfile - The H.264 profile of a rendition.
type FfmpegProfileProfile string

const (
	FfmpegProfileProfileH264Baseline        FfmpegProfileProfile = "H264Baseline"
	FfmpegProfileProfileH264Main            FfmpegProfileProfile = "H264Main"
	FfmpegProfileProfileH264High            FfmpegProfileProfile = "H264High"
	FfmpegProfileProfileH264ConstrainedHigh FfmpegProfileProfile = "H264ConstrainedHigh"
)

func (e *FfmpegProfileProfile) UnmarshalJSON(data []byte) error {
	var v string
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	switch v {
	case "H264Baseline", "H264Main", "H264High", "H264ConstrainedHigh":
		*e = FfmpegProfileProfile(v)
		return nil
	default:
		return fmt.Errorf("invalid value for FfmpegProfileProfile: %v", v)
	}
}

// FfmpegProfileEncoder - The encoder of a rendition.
type FfmpegProfileEncoder string

const (
	FfmpegProfileEncoderH264 FfmpegProfileEncoder = "H.264"
)

func (e *FfmpegProfileEncoder) UnmarshalJSON(data []byte) error {
	var v string
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	switch v {
	case "H.264":
		*e = FfmpegProfileEncoder(v)
		return nil
	default:
		return fmt.Errorf("invalid value for FfmpegProfileEncoder: %v", v)
	}
}

// FfmpegProfile - Transcode profile.
type FfmpegProfile struct {
	Width   int64                 `json:"width"`
	Name    string                `json:"name"`
	Height  int64                 `json:"height"`
	Bitrate int64                 `json:"bitrate"`
	Fps     int64                 `json:"fps"`
	FpsDen  *int64                `json:"fpsDen,omitempty"`
	Quality *int64                `json:"quality,omitempty"`
	Gop     *string               `json:"gop,omitempty"`
	Profile *FfmpegProfileProfile `json:"profile,omitempty"`
	Encoder *FfmpegProfileEncoder `json:"encoder,omitempty"`
}

func (f *FfmpegProfile) UnmarshalJSON(data []byte) error {
	if err := requireFields(data, "FfmpegProfile", "width", "name", "height", "bitrate", "fps"); err != nil {
		return err
	}
	type plain FfmpegProfile // no UnmarshalJSON: decodes the fields without recursing
	return json.Unmarshal(data, (*plain)(f))
}

// RecordingSpec - Configuration for recording the stream. This can only be set if
// `record` is true.
type RecordingSpec struct {
	Profiles []FfmpegProfile `json:"profiles,omitempty"`
}

type Session struct {
	ID *string `json:"id,omitempty"`
	// Deprecated field: This will be removed in a future release, please migrate away from it as soon as possible.
	Kind *string `json:"kind,omitempty"`
	// Deprecated field: This will be removed in a future release, please migrate away from it as soon as possible.
	UserID             *string  `json:"userId,omitempty"`
	Name               string   `json:"name"`
	LastSeen           *float64 `json:"lastSeen,omitempty"`
	SourceSegments     *float64 `json:"sourceSegments,omitempty"`
	TranscodedSegments *float64 `json:"transcodedSegments,omitempty"`
	// Duration of all the source segments, sec
	SourceSegmentsDuration *float64 `json:"sourceSegmentsDuration,omitempty"`
	// Duration of all the transcoded segments, sec
	TranscodedSegmentsDuration *float64 `json:"transcodedSegmentsDuration,omitempty"`
	SourceBytes                *float64 `json:"sourceBytes,omitempty"`
	TranscodedBytes            *float64 `json:"transcodedBytes,omitempty"`
	// Rate at which sourceBytes increases (bytes/second)
	IngestRate *float64 `json:"ingestRate,omitempty"`
	// Rate at which transcodedBytes increases (bytes/second)
	OutgoingRate *float64 `json:"outgoingRate,omitempty"`
	// Indicates whether the stream is healthy or not.
	IsHealthy *bool `json:"isHealthy,omitempty"`
	// A string array of human-readable errors describing issues affecting the stream, if any.
	Issues []string `json:"issues,omitempty"`
	// Timestamp (in milliseconds) at which stream object was created
	CreatedAt *float64 `json:"createdAt,omitempty"`
	// Points to parent stream object
	ParentID *string `json:"parentId,omitempty"`
	// The ID of the project
	ProjectID *string `json:"projectId,omitempty"`
	// Whether the stream should be recorded. Uses default settings. For more customization, create and configure an object store.
	Record *bool `json:"record,omitempty"`
	// The status of the recording process of this stream session.
	RecordingStatus *RecordingStatus `json:"recordingStatus,omitempty"`
	// URL for accessing the recording of this stream session.
	RecordingURL *string `json:"recordingUrl,omitempty"`
	// The URL for the stream session recording packaged in an MP4.
	Mp4URL *string `json:"mp4Url,omitempty"`
	// The playback ID to use with the Playback Info endpoint to retrieve playback URLs.
	PlaybackID *string         `json:"playbackId,omitempty"`
	Profiles   []FfmpegProfile `json:"profiles,omitempty"`
	// Configuration for recording the stream. This can only be set if `record` is true.
	RecordingSpec *RecordingSpec `json:"recordingSpec,omitempty"`
}

func (s *Session) UnmarshalJSON(data []byte) error {
	if err := requireFields(data, "Session", "name"); err != nil {
		return err
	}
	type plain Session
	return json.Unmarshal(data, (*plain)(s))
}

// requireFields fails unless `data` is a JSON object holding every one of `names` with a
// non-null value, as the SDK's generated decoder requires of required fields.
func requireFields(data []byte, model string, names ...string) error {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil {
		return fmt.Errorf("%s: %w", model, err)
	}
	for _, name := range names {
		value, ok := fields[name]
		if !ok || string(value) == "null" {
			return fmt.Errorf("%s: missing required field %q", model, name)
		}
	}
	return nil
}
