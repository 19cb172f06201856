// Dumps (or deletes) the Debezium topics of one topic prefix: every record as a JSON line, then exits.
//
// Topics dumped: "<prefix>.*" (data and transaction topics) and "__debezium-heartbeat.<prefix>".
// Reads each partition from the beginning up to the end offset seen at start-up (a snapshot of the
// topics, it never waits for new records) and prints one line per record, ordered by topic name,
// partition, offset:
//   {"topic":"golden.public.t","partition":0,"offset":3,"key":{...},"value":{...},"headers":{"h":"v"}}
// key and value are the record bytes embedded verbatim when they are JSON (as JsonConverter writes
// them, so field order and number spelling are preserved byte for byte), a JSON string when they
// are not, and null for a null key or a tombstone. Header values are always JSON strings (their
// UTF-8 text) or null.
//
// Usage (run-debezium compiles it into its cache; the Kafka client jars must be on the classpath):
//   java -cp '<cache>/connect-lib/*:<cache>/tools' DumpTopics --bootstrap 127.0.0.1:9092 --prefix golden
//   options: --out FILE (default stdout)   --count (print only the number of records per topic)
//            --delete (delete those topics instead, and wait until they are gone)
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.OutputStreamWriter;
import java.io.PrintWriter;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.UnknownTopicOrPartitionException;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

public class DumpTopics {
  private static final ObjectMapper MAPPER =
      new ObjectMapper().enable(com.fasterxml.jackson.databind.DeserializationFeature.FAIL_ON_TRAILING_TOKENS);

  public static void main(String[] args) throws Exception {
    String bootstrap = "127.0.0.1:9092", prefix = null, out = null;
    boolean countOnly = false, delete = false;
    for (int i = 0; i < args.length; i++) {
      switch (args[i]) {
        case "--bootstrap": bootstrap = args[++i]; break;
        case "--prefix": prefix = args[++i]; break;
        case "--out": out = args[++i]; break;
        case "--count": countOnly = true; break;
        case "--delete": delete = true; break;
        default: throw new IllegalArgumentException("unknown argument " + args[i]);
      }
    }
    if (prefix == null) throw new IllegalArgumentException("--prefix is required");

    Properties props = new Properties();
    props.put("bootstrap.servers", bootstrap);
    props.put("key.deserializer", ByteArrayDeserializer.class.getName());
    props.put("value.deserializer", ByteArrayDeserializer.class.getName());
    props.put("enable.auto.commit", "false");
    props.put("client.id", "rainbow-debezium-dump");
    props.put("max.poll.records", "2000");

    if (delete) {
      deleteTopics(bootstrap, prefix);
      return;
    }
    List<ConsumerRecord<byte[], byte[]>> records = new ArrayList<>();
    try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props)) {
      List<TopicPartition> partitions = new ArrayList<>();
      for (Map.Entry<String, List<PartitionInfo>> e : consumer.listTopics(Duration.ofSeconds(30)).entrySet()) {
        String t = e.getKey();
        if (matches(t, prefix)) {
          for (PartitionInfo p : e.getValue()) partitions.add(new TopicPartition(t, p.partition()));
        }
      }
      consumer.assign(partitions);
      consumer.seekToBeginning(partitions);
      Map<TopicPartition, Long> end = new HashMap<>(consumer.endOffsets(partitions, Duration.ofSeconds(30)));
      long deadline = System.currentTimeMillis() + 60_000;
      while (!done(consumer, end)) {
        if (System.currentTimeMillis() > deadline) throw new IllegalStateException("timed out reading " + end);
        for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(500))) {
          Long stop = end.get(new TopicPartition(r.topic(), r.partition()));
          if (stop != null && r.offset() < stop) records.add(r);
        }
      }
    }
    records.sort(Comparator.<ConsumerRecord<byte[], byte[]>, String>comparing(ConsumerRecord::topic)
        .thenComparingInt(ConsumerRecord::partition).thenComparingLong(ConsumerRecord::offset));

    Writer w = out == null ? new OutputStreamWriter(System.out, StandardCharsets.UTF_8)
        : Files.newBufferedWriter(Paths.get(out), StandardCharsets.UTF_8);
    try (PrintWriter pw = new PrintWriter(w)) {
      if (countOnly) {
        Map<String, Integer> counts = new TreeMap<>();
        for (ConsumerRecord<byte[], byte[]> r : records) counts.merge(r.topic(), 1, Integer::sum);
        counts.forEach((t, n) -> pw.println(t + " " + n));
        return;
      }
      for (ConsumerRecord<byte[], byte[]> r : records) {
        StringBuilder sb = new StringBuilder(256);
        sb.append("{\"topic\":").append(quote(r.topic()))
            .append(",\"partition\":").append(r.partition())
            .append(",\"offset\":").append(r.offset())
            .append(",\"key\":").append(json(r.key()))
            .append(",\"value\":").append(json(r.value()))
            .append(",\"headers\":{");
        boolean first = true;
        for (Header h : r.headers()) {
          if (!first) sb.append(',');
          first = false;
          sb.append(quote(h.key())).append(':')
              .append(h.value() == null ? "null" : quote(new String(h.value(), StandardCharsets.UTF_8)));
        }
        sb.append("}}");
        pw.println(sb);
      }
    }
  }

  private static boolean matches(String topic, String prefix) {
    return topic.startsWith(prefix + ".") || topic.equals("__debezium-heartbeat." + prefix);
  }

  private static void deleteTopics(String bootstrap, String prefix) throws Exception {
    Properties props = new Properties();
    props.put("bootstrap.servers", bootstrap);
    try (Admin admin = Admin.create(props)) {
      long deadline = System.currentTimeMillis() + 60_000;
      while (true) {
        List<String> topics = new ArrayList<>();
        for (String t : admin.listTopics().names().get()) if (matches(t, prefix)) topics.add(t);
        if (topics.isEmpty()) return;
        if (System.currentTimeMillis() > deadline) throw new IllegalStateException("topics not deleted: " + topics);
        try {
          admin.deleteTopics(topics).all().get();
        } catch (java.util.concurrent.ExecutionException e) {
          if (!(e.getCause() instanceof UnknownTopicOrPartitionException)) throw e;
        }
        Thread.sleep(200);
      }
    }
  }

  private static boolean done(KafkaConsumer<byte[], byte[]> consumer, Map<TopicPartition, Long> end) {
    for (Map.Entry<TopicPartition, Long> e : end.entrySet()) {
      if (consumer.position(e.getKey()) < e.getValue()) return false;
    }
    return true;
  }

  /** The bytes verbatim when they are one JSON document on one line, else a JSON string; null stays null. */
  private static String json(byte[] bytes) throws Exception {
    if (bytes == null) return "null";
    String text = new String(bytes, StandardCharsets.UTF_8);
    if (text.isBlank()) return quote(text);
    try {
      MAPPER.readTree(text);
      if (text.indexOf('\n') < 0 && text.indexOf('\r') < 0) return text.trim();
      return MAPPER.writeValueAsString(MAPPER.readTree(text));
    } catch (Exception notJson) {
      return quote(text);
    }
  }

  private static String quote(String s) throws Exception {
    return MAPPER.writeValueAsString(s);
  }
}
