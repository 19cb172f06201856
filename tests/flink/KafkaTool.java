import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.ConsumerGroupListing;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * The Kafka chores of tests/flink:
 *
 * <pre>
 * java -cp classes:lib/* KafkaTool delete BOOTSTRAP PREFIX [PREFIX ...]
 *     deletes every topic and consumer group whose name starts with one of the prefixes
 * java -cp classes:lib/* KafkaTool produce BOOTSTRAP TOPIC FILE
 *     creates TOPIC (1 partition) and writes one record per line of FILE as its value
 *     (an empty line: a tombstone)
 * </pre>
 */
public final class KafkaTool {
    public static void main(String[] args) throws Exception {
        if (args.length < 3) {
            throw new IllegalArgumentException("usage: KafkaTool delete BOOTSTRAP PREFIX... | produce BOOTSTRAP TOPIC FILE");
        }
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[1]);
        props.put(AdminClientConfig.CLIENT_ID_CONFIG, "rainbow-flink-test");
        switch (args[0]) {
            case "delete" -> delete(props, List.of(args).subList(2, args.length));
            case "produce" -> produce(props, args[2], Path.of(args[3]));
            default -> throw new IllegalArgumentException("unknown command " + args[0]);
        }
    }

    private static void delete(Properties props, List<String> prefixes) throws Exception {
        try (Admin admin = Admin.create(props)) {
            List<String> topics = new ArrayList<>();
            for (String t : admin.listTopics().names().get(30, TimeUnit.SECONDS)) {
                if (prefixes.stream().anyMatch(t::startsWith)) {
                    topics.add(t);
                }
            }
            List<String> groups = new ArrayList<>();
            for (ConsumerGroupListing g : admin.listConsumerGroups().all().get(30, TimeUnit.SECONDS)) {
                if (prefixes.stream().anyMatch(g.groupId()::startsWith)) {
                    groups.add(g.groupId());
                }
            }
            if (!topics.isEmpty()) {
                admin.deleteTopics(topics).all().get(60, TimeUnit.SECONDS);
            }
            if (!groups.isEmpty()) {
                admin.deleteConsumerGroups(groups).all().get(60, TimeUnit.SECONDS);
            }
            System.out.println("deleted topics " + topics + ", consumer groups " + groups);
        }
    }

    private static void produce(Properties props, String topic, Path file) throws Exception {
        try (Admin admin = Admin.create(props)) {
            admin.createTopics(List.of(new NewTopic(topic, 1, (short) 1))).all().get(60, TimeUnit.SECONDS);
        }
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        int n = 0;
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(props)) {
            for (String line : Files.readAllLines(file, StandardCharsets.UTF_8)) {
                producer.send(new ProducerRecord<>(topic, null, line.isEmpty() ? null : line)).get(60, TimeUnit.SECONDS);
                n++;
            }
        }
        System.out.println("wrote " + n + " records to " + topic);
    }
}
