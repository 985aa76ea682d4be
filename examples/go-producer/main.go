// A tracker that sends adpulse events with a plain Kafka client (franz-go), as docs/events.md describes:
// UTF-8 JSON values, keyed by channel (Kafka's default murmur2 partitioner keeps a channel on one
// partition), a unique event_id and ts in epoch milliseconds, and the optional adpulse-producer header.
//
//	go run . -brokers 127.0.0.1:9092 -topic adpulse.clicks -channel douyin -n 100
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kversion"
)

// Click is one record of the adpulse.clicks topic (docs/schemas/clicks.schema.json).
type Click struct {
	EventID  string `json:"event_id"`
	Ts       int64  `json:"ts"` // epoch milliseconds, UTC: when it happened
	Channel  string `json:"channel"`
	Campaign string `json:"campaign,omitempty"`
	Type     string `json:"type"` // impression | click | visit | cart
	Count    int    `json:"count,omitempty"`
}

func main() {
	brokers := flag.String("brokers", "127.0.0.1:9092", "Kafka bootstrap servers")
	topic := flag.String("topic", "adpulse.clicks", "the clicks topic (ADPULSE_TOPIC_PREFIX + clicks)")
	channel := flag.String("channel", "douyin", "channel of the events (also the key)")
	campaign := flag.String("campaign", "go-example", "campaign of the events")
	n := flag.Int("n", 10, "clicks to send")
	runID := flag.String("run", fmt.Sprintf("%d", time.Now().UnixNano()), "prefix of the event ids")
	flag.Parse()

	client, err := kgo.NewClient(
		kgo.SeedBrokers(*brokers),
		kgo.DefaultProduceTopic(*topic),
		// Kafka's default partitioner for keyed records (murmur2), as the Java client and adpulse use.
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
		kgo.ProducerLinger(20*time.Millisecond),
		// The embedded broker has no idempotent producer (InitProducerId).
		kgo.DisableIdempotentWrite(),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		// Kafka 2.3's protocol: the embedded broker (Tansu) closes the connection on the flexible
		// ApiVersions request of newer clients; any Kafka since 0.11 speaks this one.
		kgo.MaxVersions(kversion.V2_3_0()),
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kafka client:", err)
		os.Exit(1)
	}
	defer client.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	records := make([]*kgo.Record, 0, *n)
	for i := 0; i < *n; i++ {
		value, err := json.Marshal(Click{
			EventID:  fmt.Sprintf("%s-%d", *runID, i),
			Ts:       time.Now().UnixMilli(),
			Channel:  *channel,
			Campaign: *campaign,
			Type:     "click",
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "encode:", err)
			os.Exit(1)
		}
		records = append(records, &kgo.Record{
			Key:     []byte(*channel),
			Value:   value,
			Headers: []kgo.RecordHeader{{Key: "adpulse-producer", Value: []byte("go-example")}},
		})
	}
	// Waits for every acknowledgement; a retry of the same record keeps its event_id, so it is counted once.
	if err := client.ProduceSync(ctx, records...).FirstErr(); err != nil {
		fmt.Fprintln(os.Stderr, "produce:", err)
		os.Exit(1)
	}
	fmt.Printf("sent %d clicks for %s to %s\n", *n, *channel, *topic)
}
